"""segcore.storage: http(s) URLs (listing, whole-file reads with timeouts and retries) and public S3 buckets."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from segcore.config import HTTPConfig, S3Config
from segcore.errors import InputError
from segcore.raster.io import open_raster
from segcore.storage import absolute, join, list_rasters, read_bytes
from tests.conftest import write_geotiff

QUICK = HTTPConfig(timeout_s=0.5, max_retries=0, retry_delay_s=0.05)


def test_urls_are_inputs_as_they_are(tmp_path):
    url = "https://example.org/city/scene.TIF?X-Amz-Signature=abc"
    assert list_rasters([url, url]) == [url]  # not globbed for its '?', not fetched, deduplicated
    with pytest.raises(InputError, match=r"^https://example.org/city/: an http\(s\) input must name one raster"):
        list_rasters(["https://example.org/city/"])
    assert join("https://example.org/city/", "/catalog.json") == "https://example.org/city/catalog.json"
    assert absolute(url) == url and absolute("s3://b/k.tif") == "s3://b/k.tif"
    assert absolute("city/scene.tif") == os.path.join(os.getcwd(), "city", "scene.tif")


@pytest.fixture
def served(http_files, request):
    """A small JSON file under a name of this test's own; yields (name, bytes)."""
    name, data = f"{request.node.name}.json", json.dumps({"hello": request.node.name}).encode()
    (http_files.root / name).write_bytes(data)
    yield name, data
    (http_files.root / name).unlink()


def test_read_bytes_over_http_and_https(http_files, served, monkeypatch):
    name, data = served
    assert read_bytes(f"{http_files.http}/files/{name}", http=QUICK) == data
    with pytest.raises(InputError, match=rf"^{http_files.https}/files/{name}: TLS failed \(.*certificate.*\); "
                       "for a private CA, set CURL_CA_BUNDLE to a file that trusts it$"):
        read_bytes(f"{http_files.https}/files/{name}", http=QUICK)
    monkeypatch.setenv("CURL_CA_BUNDLE", str(http_files.ca))
    assert read_bytes(f"{http_files.https}/files/{name}", http=QUICK) == data


def test_read_bytes_retries_server_errors_as_configured(http_files, served):
    name, data = served
    retrying = HTTPConfig(timeout_s=5, max_retries=2, retry_delay_s=0.05)
    assert read_bytes(f"{http_files.http}/flaky/2/{name}", http=retrying) == data
    with pytest.raises(InputError, match=rf"^{http_files.http}/flaky/3/{name}: HTTP 503 Service Unavailable$"):
        read_bytes(f"{http_files.http}/flaky/3/{name}", http=retrying)


def test_read_bytes_failures_are_one_line_naming_the_url(http_files, served):
    name, _ = served
    with pytest.raises(InputError, match=rf"^{http_files.http}/files/nope.json\?\.\.\.: does not exist$"):
        read_bytes(f"{http_files.http}/files/nope.json?token=s3cr3t", http=QUICK)
    with pytest.raises(InputError, match=rf"^{http_files.http}/slow/{name}: timed out after 0.5 s \(http.timeout_s\)$"):
        read_bytes(f"{http_files.http}/slow/{name}", http=QUICK)


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    """An environment with no AWS credentials anywhere (variables, files, instance metadata)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_anonymous_s3_reads_a_public_bucket_without_credentials(s3_bucket, no_aws_credentials, tmp_path):
    import boto3

    endpoint, private = s3_bucket
    public = f"{private}-public"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="admin", aws_secret_access_key="admin")
    client.create_bucket(Bucket=public)
    client.put_bucket_policy(Bucket=public, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{public}/*"}]}))
    # moto checks an unsigned HEAD against the made-up action s3:HeadObject, not s3:GetObject as AWS does; a
    # public-read object ACL lets the HEAD through (s3fs sends one before a GET).
    pixels = write_geotiff(tmp_path / "scene.tif", np.full((3, 20, 30), 7, np.uint8)).read_bytes()
    client.put_object(Bucket=public, Key="city/scene.tif", Body=pixels, ACL="public-read")
    client.put_object(Bucket=private, Key="city/scene.tif", Body=pixels)
    anonymous = S3Config(endpoint_url=endpoint, anonymous=True)

    assert read_bytes(f"s3://{public}/city/scene.tif", anonymous) == pixels
    assert list_rasters([f"s3://{public}/city/"], anonymous) == [f"s3://{public}/city/scene.tif"]
    with open_raster(f"s3://{public}/city/scene.tif", anonymous) as dataset:
        assert (dataset.read() == 7).all()
    with pytest.raises(InputError, match=rf"^s3://{private}/city/scene.tif: access denied \(Forbidden\)$"):
        read_bytes(f"s3://{private}/city/scene.tif", anonymous)
    with pytest.raises(InputError, match=rf"^s3://{public}/city/scene.tif: no AWS credentials found \(for a public "
                       r"bucket, set s3.anonymous=true\)$"):
        read_bytes(f"s3://{public}/city/scene.tif", S3Config(endpoint_url=endpoint))

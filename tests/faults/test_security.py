"""Secrets and names: refused S3 keys are never echoed, no credential lands in any output or log, and odd input
names never write outside the output."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from segcore.config import load_config
from segcore.data.patches import list_pairs
from segcore.pipelines.prepare import prepare_dataset
from tests import jobs, servers
from tests.conftest import REPO, write_geotiff
from tests.faults.common import MARKER, prep_config
from tests.helpers import by_name, manifest, tree


def test_refused_s3_credentials_verified_with_a_plain_client(refusing_s3):
    import boto3
    import botocore.exceptions

    client = boto3.client("s3", endpoint_url=refusing_s3.endpoint, region_name="us-east-1")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.head_object(Bucket=refusing_s3.bucket, Key="in/city.tif")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_no_secret_in_the_killed_and_resumed_jobs_logs_outputs_or_ray_logs(killed_job):
    texts = {f"{name} stdout+stderr": text.encode() for name, text in killed_job.logs.items()}
    files = jobs.files_under(killed_job.out, killed_job.ray_tmp)
    texts.update({str(path): path.read_bytes() for path in files})
    assert any("/logs/" in name for name in texts) and any(name.endswith("mask.tif") for name in texts)
    assert jobs.leaks(killed_job.secrets.values(), texts) == []


def test_no_secret_in_prepare_and_training_outputs_checkpoints_metrics_or_ray_logs(city, ray_local, s3_bucket,
                                                                                     trained_run, capsys):
    """Prepare reads and writes S3, the session's training run read its patches from S3 on two workers and
    wrote checkpoints: none of the credentials the workers used appears anywhere they or Ray wrote."""
    import boto3
    import ray

    endpoint, bucket = s3_bucket
    secrets = [os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
               if os.environ.get(k)]
    client = boto3.client("s3", endpoint_url=endpoint)
    servers.upload(client, bucket, {"in/city.tif": city.image, "in/city.geojson": city.buildings})
    s3 = f"s3.endpoint_url={endpoint}"
    prepare_dataset([f"s3://{bucket}/in/city.tif"], [f"s3://{bucket}/in/city.geojson"], f"s3://{bucket}/ds",
                    load_config(None, ["prepare.tile_size=64", "prepare.split_block=128", s3]))
    texts = {f"s3://{name}/{key}": data for name in (bucket, trained_run.bucket)
             for key, data in servers.s3_objects(client, name).items()}
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    for path in jobs.files_under(trained_run.run_dir, session / "logs"):
        texts[str(path)] = path.read_bytes()
    captured = capsys.readouterr()
    texts["stdout+stderr"] = (captured.out + captured.err + trained_run.printed).encode()
    assert any(name.endswith("best.pt") for name in texts) and any(name.endswith("manifest.csv") for name in texts)
    assert any(b"epoch 2/2" in data for name, data in texts.items() if "/logs/" in name), "no training worker log"
    assert jobs.leaks(secrets, texts) == []


def test_prepare_output_names_from_odd_input_names_stay_inside_the_dataset(pixels, city, ray_local, tmp_path):
    rgb, grid = pixels
    crop = rgb[:, :128, :128]
    images = [write_geotiff(tmp_path / "in" / name, crop, **grid) for name in ("..%2f..%2fescape.tif", "...tif",
                                                                             f"$(touch {MARKER}); x.tif")]
    (tmp_path / "in" / "link.tif").symlink_to(images[0])
    labels = tmp_path / "labels"
    for image in [*images, tmp_path / "in" / "link.tif"]:
        label = np.zeros((128, 128), np.uint8)
        label[40:60, 30:70] = 1  # a building: a dataset without any is refused
        write_geotiff(labels / image.name, label, **grid)
    before = tree(tmp_path)
    out = tmp_path / "ds"
    prepare_dataset([str(tmp_path / "in")], [str(labels)], str(out), prep_config())
    assert {p for p in tree(tmp_path) - before if not p.startswith("ds/") and p != "ds"} == set()
    rows = manifest(out)
    assert len(rows) == 4 and not (REPO / MARKER).exists() and not (tmp_path / MARKER).exists()
    for row in rows:  # inside ROOT, and none hidden (readers skip dot files): every patch is trained on
        path = (out / row["image"]).resolve()
        assert path.is_relative_to(out.resolve()) and not path.name.startswith(".")
    assert sum(len(list_pairs(str(out), split)) for split in ("train", "val", "test")) == 4


def test_segment_output_names_from_odd_input_names_stay_inside_out(mixed_run):
    created = mixed_run.after - mixed_run.before
    assert {p for p in created if p != "out" and not p.startswith("out/")} == set()
    entries = by_name(mixed_run.summary)
    keys = [entries[name]["key"] for name in mixed_run.odd_names]
    assert len(set(keys)) == 4 and all("/" not in key and not key.startswith(".") for key in keys), keys
    out = mixed_run.out.resolve()
    for key in keys:
        assert (mixed_run.out / key / "mask.tif").resolve().parent.parent == out
    assert all(p.resolve().is_relative_to(out) for p in mixed_run.out.rglob("*"))
    assert not (REPO / MARKER).exists() and not (mixed_run.root / MARKER).exists()


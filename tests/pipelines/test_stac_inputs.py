"""STAC catalogs as inputs of segment and prepare: local, on S3 and over HTTPS, each Item's raster a mosaic of
its own named by the Item's id; Items without a usable raster fail alone (tests/test_stac.py has the catalog)."""
from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import boto3
import numpy as np
import pystac
import pytest

from segcore.config import load_config
from tests import jobs
from tests.helpers import by_key, error_lines, manifest, read_band
from tests.pipelines.test_segment import SEGMENT, segment
from tests.test_stac import make_catalog, pixels


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return make_catalog(tmp_path_factory.mktemp("stac") / "stac")


def test_segment_a_local_catalog_names_outputs_by_item_id(catalog, tiny_checkpoint, ray_local, tmp_path):
    summary, err = segment([str(catalog / "catalog.json")], tmp_path / "out", tiny_checkpoint)
    assert (summary["ok"], summary["failed"]) == (2, 2)
    for item in ("north", "south"):
        mask = read_band(tmp_path / "out" / item / "mask.tif")
        assert mask.shape == pixels(item).shape[1:] and set(np.unique(mask)) <= {0, 1}
        assert by_key(summary)[item]["input"] == str(catalog / "city" / item / "scene.tif")
    lines = error_lines(err)
    assert any("item 'thumb'" in line and "not a GeoTIFF/COG raster" in line for line in lines), lines
    assert any("item 'bare' has no asset 'visual'" in line for line in lines), lines


def test_segment_catalogs_on_s3_and_over_https_in_one_run(catalog, tiny_checkpoint, s3_bucket, http_files, tmp_path):
    """Through the command line, in a Ray of its own: its workers read the HTTPS rasters, so they need the
    environment's CA bundle, as on a cluster."""
    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint)
    for path in catalog.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"open-data/{path.relative_to(catalog).as_posix()}")
    shutil.copytree(catalog, http_files.root / "stac-segment")
    specs = [f"s3://{bucket}/open-data/catalog.json", f"{http_files.https}/files/stac-segment/catalog.json"]
    env = jobs.job_env(jobs.short_tmp("stac"), CURL_CA_BUNDLE=str(http_files.ca),
                       **{key: os.environ[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    result = jobs.run_job("segment", "--input", *specs, "--checkpoint", tiny_checkpoint, "--output", tmp_path / "out",
                          "--set", f"s3.endpoint_url={endpoint}", "--set", "http.max_retries=0",
                          *(arg for setting in SEGMENT for arg in ("--set", setting)), env=env, timeout=300)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["ok"], summary["failed"]) == (4, 4), result.stderr[-3000:]
    assert result.returncode == 1  # some inputs failed (each alone, with its line)
    ok = sorted(i["input"] for i in summary["inputs"] if i["status"] == "ok")
    assert ok == sorted([*(f"s3://{bucket}/open-data/city/{item}/scene.tif" for item in ("north", "south")),
                         *(f"{http_files.https}/files/stac-segment/city/{item}/scene.tif"
                           for item in ("north", "south"))])
    masks = [read_band(tmp_path / "out" / i["key"] / "mask.tif") for i in summary["inputs"] if i["status"] == "ok"]
    assert all(mask.shape == (32, 48) for mask in masks)


@pytest.mark.parametrize("where", ["local", "s3", "https"])
def test_prepare_from_an_item_collection_names_patches_by_item_id(where, cities, ray_local, s3_bucket, http_files,
                                                                  monkeypatch, tmp_path):
    """An ItemCollection of two cities, on local disk, on S3 or over HTTPS, with its rasters beside it."""
    from segcore.pipelines.prepare import prepare_dataset

    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint)
    items, labels, sources = [], tmp_path / "labels", set()
    labels.mkdir()
    for seed, item_id in enumerate(("east", "west")):
        city = cities(640, 512, seed=seed)
        href = str(city.image)
        if where == "s3":
            client.upload_file(href, bucket, f"scenes/{item_id}.tif")
            href = f"s3://{bucket}/scenes/{item_id}.tif"
        elif where == "https":
            (http_files.root / "prepare-stac").mkdir(exist_ok=True)
            shutil.copy(href, http_files.root / "prepare-stac" / f"{item_id}.tif")
            href = f"{http_files.https}/files/prepare-stac/{item_id}.tif"
        sources.add(href)
        bbox = [15.0 + seed, 47.0, 15.01 + seed, 47.01]
        geometry = {"type": "Polygon", "coordinates": [[[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]],
                                                        [bbox[0], bbox[3]], [bbox[0], bbox[1]]]]}
        item = pystac.Item(item_id, geometry, bbox, datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc), {})
        item.add_asset("visual", pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF))
        items.append(item)
        shutil.copy(city.labels, labels / f"{item_id}.tif")  # label files are matched to Items by id
    collection = tmp_path / "items.json"
    pystac.ItemCollection(items).save_object(dest_href=str(collection))
    spec = str(collection)
    if where == "s3":
        client.upload_file(spec, bucket, "scenes/items.json")
        spec = f"s3://{bucket}/scenes/items.json"
    elif where == "https":
        monkeypatch.setenv("CURL_CA_BUNDLE", str(http_files.ca))  # the driver reads the catalog, the workers pixels
        shutil.copy(spec, http_files.root / "prepare-stac" / "items.json")
        spec = f"{http_files.https}/files/prepare-stac/items.json"
    out = tmp_path / "patches"
    cfg = load_config(None, ["prepare.tile_size=128", "prepare.split_block=256", f"s3.endpoint_url={endpoint}"])
    summary = prepare_dataset([spec], [str(labels)], str(out), cfg)
    rows = manifest(out)
    assert sum(summary.patches.values()) == len(rows) > 0
    assert {row["source_image"] for row in rows} == sources
    names = {Path(row["image"]).name.split("_")[0] for row in rows}
    assert names == {"east", "west"}

"""segcore.stac: STAC Items, ItemCollections and static catalogs as input specs, local, on S3 and over HTTPS."""
from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio.shutil
from rasterio.windows import Window

from segcore.config import HTTPConfig, InputConfig, S3Config, StacConfig
from segcore.errors import InputError
from segcore.raster.io import open_raster, read_rgb
from segcore.stac import StacFailure, StacRaster, is_stac, resolve_stac
from tests.conftest import write_geotiff

NORTH, SOUTH = (15.0, 47.9, 15.01, 47.91), (15.0, 47.7, 15.01, 47.71)  # west, south, east, north in degrees


def day(month: int, day: int) -> datetime.datetime:
    return datetime.datetime(2023, month, day, tzinfo=datetime.timezone.utc)


# id: bbox, acquisition time, the asset "visual" as (file, media type) or None
ITEMS = {
    "north": (NORTH, day(5, 1), ("scene.tif", pystac.MediaType.COG)),
    "south": (SOUTH, day(9, 1), ("scene.tif", None)),
    "thumb": (NORTH, day(5, 2), ("thumb.png", pystac.MediaType.PNG)),
    "bare": (NORTH, day(5, 3), None),
}


def pixels(item_id: str) -> np.ndarray:
    return np.full((3, 32, 48), 10 + list(ITEMS).index(item_id), np.uint8)


def write_cog(path: Path, array: np.ndarray) -> None:
    write_geotiff(path.with_suffix(".plain.tif"), array)
    rasterio.shutil.copy(path.with_suffix(".plain.tif"), path, driver="COG")
    path.with_suffix(".plain.tif").unlink()


def make_item(item_id: str, folder: Path) -> pystac.Item:
    (west, south, east, north), when, visual = ITEMS[item_id]
    geometry = {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north],
                                                    [west, south]]]}
    item = pystac.Item(item_id, geometry, [west, south, east, north], when, {})
    (folder / item_id).mkdir(parents=True, exist_ok=True)
    if visual:
        name, media_type = visual
        write_cog(folder / item_id / name, pixels(item_id))
        item.add_asset("visual", pystac.Asset(str(folder / item_id / name), media_type=media_type))
    item.add_asset("metadata", pystac.Asset(str(folder / item_id / "meta.xml"), media_type=pystac.MediaType.XML))
    return item


@pytest.fixture
def catalog(tmp_path) -> Path:
    return make_catalog(tmp_path / "stac")


def make_catalog(root: Path) -> Path:
    """A self-contained static catalog (catalog -> collection -> ITEMS, relative hrefs) written to `root`."""
    collection = pystac.Collection("city", "aerial tiles", pystac.Extent(
        pystac.SpatialExtent([[15.0, 47.7, 15.01, 47.91]]), pystac.TemporalExtent([[day(5, 1), day(9, 1)]])))
    for item_id in ITEMS:
        collection.add_item(make_item(item_id, root / "city"))
    top = pystac.Catalog("top", "test catalog")
    top.add_child(collection)
    top.normalize_hrefs(str(root))
    top.make_all_asset_hrefs_relative()
    top.save(pystac.CatalogType.SELF_CONTAINED)
    assert json.loads((root / "city" / "north" / "north.json").read_text())["assets"]["visual"]["href"] == "./scene.tif"
    return root


def assert_resolved(results: list, base: str, read) -> None:
    """The four Items: two rasters (read back by `read(href)`), two failures naming the spec and the Item."""
    assert [r.item_id for r in results] == list(ITEMS)
    north, south, thumb, bare = results
    assert north == StacRaster("north", f"{base}/city/north/scene.tif")
    assert south == StacRaster("south", f"{base}/city/south/scene.tif")  # no media type, but a .tif
    assert isinstance(thumb, StacFailure) and thumb.reason.endswith(
        "item 'thumb': asset 'visual' has media type 'image/png', not a GeoTIFF/COG raster")
    assert isinstance(bare, StacFailure) and bare.reason.endswith(
        "item 'bare' has no asset 'visual' (its assets: metadata); set stac.asset")
    assert np.array_equal(read(north.href), pixels("north"))


def read_local(href: str, **storage) -> np.ndarray:
    with open_raster(href, **storage) as dataset:
        return read_rgb(dataset, Window(0, 0, dataset.width, dataset.height), InputConfig())[0]


def test_local_catalog_resolves_every_item_to_its_raster_or_a_failure(catalog):
    results = resolve_stac(str(catalog / "catalog.json"))
    assert_resolved(results, str(catalog), read_local)
    alone = resolve_stac(str(catalog / "city" / "collection.json"))  # the collection without its catalog
    assert [r for r in alone if isinstance(r, StacRaster)] == [r for r in results if isinstance(r, StacRaster)]
    assert [r.item_id for r in alone] == list(ITEMS)


def test_bbox_and_datetime_select_items_of_a_catalog(catalog):
    spec = str(catalog / "catalog.json")
    south = StacConfig(bbox=[14.9, 47.6, 15.1, 47.75])
    assert [r.item_id for r in resolve_stac(spec, south)] == ["south"]
    may = StacConfig(datetime="2023-05-01/2023-05-02")  # a date as the end means the whole day
    assert [r.item_id for r in resolve_stac(spec, may)] == ["north", "thumb"]
    both = StacConfig(bbox=[14.9, 47.85, 15.1, 48.0], datetime="2023-05-03T00:00:00Z/..")
    assert [r.item_id for r in resolve_stac(spec, both)] == ["bare"]
    with pytest.raises(InputError, match=r"catalog.json: none of its 4 Items meets stac.datetime '2024-01-01'$"):
        resolve_stac(spec, StacConfig(datetime="2024-01-01"))


def test_a_single_item_is_taken_whatever_the_filters(catalog):
    spec = str(catalog / "city" / "south" / "south.json")
    far_away = StacConfig(bbox=[100.0, 0.0, 101.0, 1.0])
    assert resolve_stac(spec, far_away) == [StacRaster("south", str(catalog / "city" / "south" / "scene.tif"))]


def test_item_collection_hrefs_resolve_against_its_file(catalog, tmp_path):
    items = [pystac.Item.from_file(str(catalog / "city" / name / f"{name}.json")) for name in ("north", "south")]
    data = pystac.ItemCollection(items).to_dict(transform_hrefs=False)
    for feature, name in zip(data["features"], ("north", "south"), strict=True):
        feature["assets"]["visual"]["href"] = f"city/{name}/scene.tif"  # relative to the file
        feature["links"] = []
    (catalog / "search.json").write_text(json.dumps(data))
    results = resolve_stac(str(catalog / "search.json"), StacConfig(datetime="../2023-06-30"))
    assert results == [StacRaster("north", str(catalog / "city" / "north" / "scene.tif"))]


def test_catalog_on_s3(catalog, s3_bucket):
    endpoint, bucket = s3_bucket
    s3 = S3Config(endpoint_url=endpoint)
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for path in catalog.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"open-data/{path.relative_to(catalog).as_posix()}")
    results = resolve_stac(f"s3://{bucket}/open-data/catalog.json", s3=s3)
    assert_resolved(results, f"s3://{bucket}/open-data", lambda href: read_local(href, s3=s3))


def test_catalog_over_https(catalog, http_files, monkeypatch, request):
    monkeypatch.setenv("CURL_CA_BUNDLE", str(http_files.ca))
    folder = request.node.name
    shutil.copytree(catalog, http_files.root / folder)
    http = HTTPConfig(timeout_s=5, max_retries=0)
    results = resolve_stac(f"{http_files.https}/files/{folder}/catalog.json", http=http)
    assert_resolved(results, f"{http_files.https}/files/{folder}", lambda href: read_local(href, http=http))
    with pytest.raises(InputError, match=rf"^{http_files.https}/files/{folder}/nope.json: does not exist$"):
        resolve_stac(f"{http_files.https}/files/{folder}/nope.json", http=http)


def test_json_that_is_not_stac_is_one_line(tmp_path):
    (tmp_path / "buildings.json").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [15.0, 47.9]}}]}))
    with pytest.raises(InputError, match=r"buildings.json: not a valid STAC Item, ItemCollection or Catalog"):
        resolve_stac(str(tmp_path / "buildings.json"))
    (tmp_path / "broken.json").write_text('{"type": "Catalog", ')
    with pytest.raises(InputError, match=r"broken.json: not valid JSON \("):
        resolve_stac(str(tmp_path / "broken.json"))


def test_is_stac():
    assert is_stac("s3://b/catalog.json") and is_stac("https://h/items/x.JSON?sig=1") and is_stac("c/item.json")
    assert not is_stac("https://h/scene.tif?a=b.json") and not is_stac("scene.tif")

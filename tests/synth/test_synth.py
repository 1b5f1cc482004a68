"""The embedded sample city (segcore.synth): determinism, georeference, label/GeoJSON agreement."""
import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from segcore.synth import CityPaths, Scene, generate_city, render_scene
from segcore.synth.render import STRIP_ROWS

WIDTH, HEIGHT, SEED = 600, 500, 3


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> CityPaths:
    return generate_city(tmp_path_factory.mktemp("city"), WIDTH, HEIGHT, seed=SEED)


def _files(paths: CityPaths) -> list:
    return [paths.image, paths.labels, paths.buildings]


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _burn_geojson(paths: CityPaths) -> np.ndarray:
    """Rasterize buildings.geojson on the image grid, as a consumer of the files would."""
    features = json.loads(paths.buildings.read_text())["features"]
    with rasterio.open(paths.image) as src:
        if not features:
            return np.zeros(src.shape, np.uint8)
        return rasterize([(f["geometry"], 255) for f in features], out_shape=src.shape,
                         transform=src.transform, fill=0, all_touched=False, dtype="uint8")


def test_same_seed_gives_byte_identical_files(city, tmp_path):
    again = generate_city(tmp_path, WIDTH, HEIGHT, seed=SEED)
    for first, second in zip(_files(city), _files(again), strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name


def test_different_seed_gives_a_different_city(city, tmp_path):
    other = generate_city(tmp_path, WIDTH, HEIGHT, seed=SEED + 1)
    for first, second in zip(_files(city), _files(other), strict=True):
        assert first.read_bytes() != second.read_bytes(), first.name


def test_only_the_three_files_are_left(city):
    assert sorted(p.name for p in city.image.parent.iterdir()) == [
        "buildings.geojson", "image.tif", "labels.tif"]


def test_georeference_is_projected_utm_at_half_metre(city):
    with rasterio.open(city.image) as image, rasterio.open(city.labels) as labels:
        assert image.crs.is_projected and image.crs.to_epsg() == 32633
        assert image.res == (0.5, 0.5)
        t = image.transform
        assert t.b == t.d == 0 and t.a > 0 > t.e, "north-up"
        assert 166_000 <= t.c <= 834_000 and 0 < t.f < 9_400_000, "plausible UTM origin"
        assert (labels.crs, labels.transform, labels.shape) == (image.crs, t, image.shape)
        assert image.shape == (HEIGHT, WIDTH)


def test_band_layout_tiling_and_compression(city):
    with rasterio.open(city.image) as image, rasterio.open(city.labels) as labels:
        assert image.count == 3 and image.dtypes == ("uint8",) * 3
        assert [c.name for c in image.colorinterp] == ["red", "green", "blue"]
        assert labels.count == 1 and labels.dtypes == ("uint8",)
        for src in (image, labels):
            assert src.profile["tiled"] and src.block_shapes[0] == (512, 512)
            assert src.compression.name == "deflate"


def test_labels_are_binary_with_a_plausible_building_share(city):
    labels = _read(city.labels)[0]
    assert set(np.unique(labels)) <= {0, 255}
    assert 0.05 < (labels > 0).mean() < 0.5


def test_geojson_is_gdal_style_and_rasterizes_to_the_labels(city):
    collection = json.loads(city.buildings.read_text())
    assert collection["type"] == "FeatureCollection"
    assert collection["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    ids = [f["properties"]["id"] for f in collection["features"]]
    assert ids and all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
    ring = collection["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1], "GeoJSON rings are closed"
    np.testing.assert_array_equal(_burn_geojson(city), _read(city.labels)[0])


@pytest.mark.parametrize("width, height", [(385, 383), (100, 70), (1, 50), (257, 2 * STRIP_ROWS + 77)])
def test_odd_and_multi_strip_sizes(tmp_path, width, height):
    paths = generate_city(tmp_path, width, height, seed=1)
    image, labels = _read(paths.image), _read(paths.labels)
    assert image.shape == (3, height, width) and labels.shape == (1, height, width)
    np.testing.assert_array_equal(_burn_geojson(paths), labels[0])


def test_render_scene_matches_generate_city(city):
    scene = render_scene(WIDTH, HEIGHT, seed=SEED)
    assert isinstance(scene, Scene)
    np.testing.assert_array_equal(scene.image, np.moveaxis(_read(city.image), 0, 2))
    np.testing.assert_array_equal(scene.labels, _read(city.labels)[0])
    features = json.loads(city.buildings.read_text())["features"]
    assert len(scene.polygons) == len(features)
    first = scene.polygons[0]
    assert first[0] != first[-1] and all(len(vertex) == 2 for vertex in first), "open pixel rings"


def test_render_scene_over_several_strips_matches_files(tmp_path):
    width, height = 200, STRIP_ROWS + 100
    paths = generate_city(tmp_path, width, height, seed=5)
    scene = render_scene(width, height, seed=5)
    np.testing.assert_array_equal(scene.image, np.moveaxis(_read(paths.image), 0, 2))
    np.testing.assert_array_equal(scene.labels, _read(paths.labels)[0])


def test_scene_looks_aerial_not_flat():
    scene = render_scene(384, 384, seed=0)
    roofs, ground = scene.image[scene.labels > 0], scene.image[scene.labels == 0]
    assert roofs.std() > 10 and ground.std() > 10, "varied colours on both classes"


@pytest.mark.parametrize("bad", [dict(width=0), dict(height=-3), dict(seed=-1), dict(crs="EPSG:4326")])
def test_rejects_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError):
        generate_city(tmp_path, **{"width": 64, "height": 64, **bad})
    assert not any(tmp_path.iterdir())


def test_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "segcore.synth", "--width", "96", "--height", "80", "--seed", "2",
         "--output", str(tmp_path)], capture_output=True, text=True, check=True)
    assert len(done.stdout.strip().splitlines()) == 1 and str(tmp_path) in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buildings.geojson", "image.tif", "labels.tif"]

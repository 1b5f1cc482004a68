"""Patch datasets from city mosaics: layout, spatial split, fidelity to the source, S3, bad input."""
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_geom
from rasterio.windows import Window

from segcore.config import load_config
from segcore.data.patches import MANIFEST_COLUMNS, SPLITS, decode_image, decode_label, list_pairs, training_gsd
from segcore.errors import InputError
from segcore.pipelines.prepare import Square, assign_splits, plan_dataset, prepare_dataset, run_plan, square_grid
from segcore.raster.grid import tile_windows
from segcore.storage import filesystem
from segcore.synth import generate_city
from tests.conftest import REPO
from tests.helpers import leftovers, manifest
from tests.inputs import corrupt_middle_block

SMALL = ["prepare.tile_size=128", "prepare.split_block=512"]


def config(*overrides):
    return load_config(None, [*SMALL, *overrides])


def source_window(path, row: int, col: int, tile: int) -> np.ndarray:
    """(bands, tile, tile) of the source at (row, col), zero-padded past its edges."""
    with rasterio.open(path) as src:
        return src.read(window=Window(col, row, tile, tile), boundless=True, fill_value=0)


@pytest.fixture(scope="module")
def city(cities):
    return cities(1000, 700)


@pytest.fixture(scope="module")
def raster_ds(city, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("raster") / "ds"
    return out, prepare_dataset([str(city.image)], [str(city.labels)], str(out), config())


def test_layout_counts_and_formats(raster_ds, city):
    out, summary = raster_ds
    rows = manifest(out)
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    expected = len(tile_windows(1000, 700, 128, 0, pad_end=True))  # squares of 512 hold whole tiles
    assert len(rows) + summary.skipped_nodata == expected == 48
    assert summary.patches == {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    assert all(summary.patches[s] > 0 for s in SPLITS)
    assert not list(out.parent.glob("ds.tmp-*"))
    for split in SPLITS:
        pairs = list_pairs(str(out), split)
        assert len(pairs) == summary.patches[split]
        for image_path, label_path in pairs:
            assert Path(image_path).name == Path(label_path).name and image_path.endswith(".png")
            image = decode_image(Path(image_path).read_bytes(), image_path)
            label = decode_label(Path(label_path).read_bytes(), label_path)
            assert image.shape == (128, 128, 3) and image.dtype == np.uint8
            assert label.shape == (128, 128) and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
    assert sum(float(r["building_fraction"]) for r in rows) > 0


def test_the_manifest_records_each_mosaics_ground_sample_distance(raster_ds):
    out, _ = raster_ds
    gsds = {float(row["gsd_m"]) for row in manifest(out)}
    assert len(gsds) == 1 and abs(gsds.pop() - 0.5) < 0.002  # the city's 0.5 m UTM pixels, in ground metres
    assert abs(training_gsd(str(out)) - 0.5) < 0.002


def test_patches_equal_their_source_windows(raster_ds, city):
    out, _ = raster_ds
    for row in manifest(out):
        r, c = int(row["row"]), int(row["col"])
        assert row["image"].endswith(f"_r{r}_c{c}.png") and row["source_image"] == str(city.image)
        assert (int(row["height"]), int(row["width"])) == (min(128, 700 - r), min(128, 1000 - c))
        image = decode_image((out / row["image"]).read_bytes(), row["image"])
        assert np.array_equal(image, source_window(city.image, r, c, 128).transpose(1, 2, 0))
        label = decode_label((out / row["label"]).read_bytes(), row["label"])
        assert np.array_equal(label, (source_window(city.labels, r, c, 128)[0] > 0).astype(np.uint8))


def assert_spatially_disjoint(rows: list[dict], shape=(700, 1000)) -> None:
    owner = np.full(shape, -1)
    for row in rows:
        r, c, h, w = (int(row[k]) for k in ("row", "col", "height", "width"))
        window = owner[r:r + h, c:c + w]
        split = SPLITS.index(row["split"])
        assert np.isin(window, (-1, split)).all(), f"{row['image']} overlaps another split"
        window[...] = split
    assert (owner >= 0).all()  # and nothing was dropped


def test_split_is_spatially_disjoint(raster_ds):
    assert_spatially_disjoint(manifest(raster_ds[0]))


def test_rerun_is_byte_identical_and_overlapping_patches_stay_in_their_split(city, ray_local, tmp_path):
    cfg = config("prepare.overlap=32", "prepare.seed=7")
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        prepare_dataset([str(city.image)], [str(city.labels)], str(out), cfg)
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(runs[1]) for p in runs[1].rglob("*") if p.is_file())
    assert all((runs[0] / f).read_bytes() == (runs[1] / f).read_bytes() for f in files)
    rows = manifest(runs[0])
    assert_spatially_disjoint(rows)
    for row in rows[::5]:  # shifted patches at square edges still show their own window
        r, c = int(row["row"]), int(row["col"])
        image = decode_image((runs[0] / row["image"]).read_bytes(), row["image"])
        assert np.array_equal(image, source_window(city.image, r, c, 128).transpose(1, 2, 0))


def test_polygon_labels_equal_raster_labels(raster_ds, city, ray_local, tmp_path):
    out = tmp_path / "ds"
    prepare_dataset([str(city.image)], [str(city.buildings)], str(out), config())
    rows, reference = manifest(out), manifest(raster_ds[0])
    assert [r["label"] for r in rows] == [r["label"] for r in reference]
    for row in rows:
        assert (out / row["label"]).read_bytes() == (raster_ds[0] / row["label"]).read_bytes(), row["label"]
        assert (out / row["image"]).read_bytes() == (raster_ds[0] / row["image"]).read_bytes()


def test_polygons_in_another_crs_are_reprojected(raster_ds, city, ray_local, tmp_path):
    data = json.loads(city.buildings.read_text())
    with rasterio.open(city.image) as src:
        image_crs = src.crs
    for feature in data["features"]:
        feature["geometry"] = transform_geom(image_crs, "EPSG:4326", feature["geometry"])
    del data["crs"]  # RFC 7946: no crs member means longitude/latitude on WGS 84
    lonlat = tmp_path / "buildings_4326.geojson"
    lonlat.write_text(json.dumps(data))
    out = tmp_path / "ds"
    prepare_dataset([str(city.image)], [str(lonlat)], str(out), config())
    agree = total = 0
    for row in manifest(out):
        ours = decode_label((out / row["label"]).read_bytes(), row["label"])
        theirs = decode_label((raster_ds[0] / row["label"]).read_bytes(), row["label"])
        agree, total = agree + int((ours == theirs).sum()), total + ours.size
    assert agree / total >= 0.99


def test_real_tile_size_and_overwrite(city, ray_local, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old.txt").write_text("previous dataset")
    cfg = load_config(None, ["prepare.split_block=768"])
    with pytest.raises(InputError, match="already exists and is not empty"):
        prepare_dataset([str(city.image)], [str(city.labels)], str(out), cfg)
    summary = prepare_dataset([str(city.image)], [str(city.labels)], str(out), cfg, overwrite=True)
    assert not (out / "old.txt").exists() and leftovers(out) == [out]
    rows = manifest(out)
    assert len(rows) + summary.skipped_nodata == 6  # 3 x 2 patches of 384, the edge ones padded
    for row in rows:
        image = decode_image((out / row["image"]).read_bytes(), row["image"])
        assert image.shape == (384, 384, 3)
        r, c = int(row["row"]), int(row["col"])
        assert np.array_equal(image, source_window(city.image, r, c, 384).transpose(1, 2, 0))


def test_many_mosaics_in_parallel_with_a_label_directory(ray_local, tmp_path):
    """Two mosaics from a glob, labels matched by stem from one directory (a mask and polygons)."""
    north = generate_city(tmp_path / "gen_north", 600, 400, seed=1)
    south = generate_city(tmp_path / "gen_south", 520, 300, seed=2)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    north.image.rename(tmp_path / "images" / "north.tif")
    south.image.rename(tmp_path / "images" / "south.tif")
    north.labels.rename(tmp_path / "labels" / "north.tif")
    south.buildings.rename(tmp_path / "labels" / "south.geojson")
    out = tmp_path / "ds"
    summary = prepare_dataset([str(tmp_path / "images" / "*.tif")], [str(tmp_path / "labels")], str(out),
                              config("prepare.split_block=256"))
    rows = manifest(out)
    assert summary.mosaics == 2 and len(rows) + summary.skipped_nodata == 5 * 4 + 5 * 3
    for stem, label, (height, width) in (("north", "north.tif", (400, 600)), ("south", "south.geojson", (300, 520))):
        mine = [r for r in rows if Path(r["source_image"]).stem == stem]
        assert {Path(r["source_label"]).name for r in mine} == {label}
        assert all(Path(r["image"]).name.startswith(f"{stem}_r") for r in mine)
        assert_spatially_disjoint(mine, (height, width))
    assert all(summary.patches[s] > 0 for s in SPLITS)


def test_s3_input_and_output(city, ray_local, s3_bucket):
    import boto3

    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint)
    client.upload_file(str(city.image), bucket, "in/images/downtown.tif")
    client.upload_file(str(city.buildings), bucket, "in/labels/downtown.geojson")
    cfg = config(f"s3.endpoint_url={endpoint}")
    root = f"s3://{bucket}/ds"
    summary = prepare_dataset([f"s3://{bucket}/in/images/"], [f"s3://{bucket}/in/labels"], root, cfg)
    fs = filesystem(root, cfg.s3)
    lines = fs.cat_file(f"{root}/manifest.csv").decode().splitlines()
    assert len(lines) - 1 == sum(summary.patches.values())
    for split in SPLITS:
        pairs = list_pairs(root, split, cfg.s3)
        assert len(pairs) == summary.patches[split] and pairs[0][0].startswith(f"s3://{bucket}/ds/{split}/images/")
        image_path, label_path = pairs[0]
        assert decode_image(fs.cat_file(image_path), image_path).shape == (128, 128, 3)
        assert set(np.unique(decode_label(fs.cat_file(label_path), label_path))) <= {0, 1}


# --- bad input -------------------------------------------------------------------------------------------

def _rgb(height=150, width=200, dtype=np.uint8):
    return np.random.default_rng(0).integers(0, 200, (3, height, width)).astype(dtype)


def _polygons(path: Path, offset: float = 0.0) -> Path:
    x, y = 500010.0 + offset, 5299990.0
    ring = [[x, y], [x + 20, y], [x + 20, y - 20], [x, y - 20], [x, y]]
    path.write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    return path


def _junk(geotiff, tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"II*\0 not really a tiff")
    return tmp_path / "junk.tif", geotiff("mask.tif", np.zeros((150, 200), np.uint8)), "not a readable raster"


def _truncated(geotiff, tmp_path):
    full = geotiff("full.tif", _rgb())
    data = full.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:len(data) // 2])
    return tmp_path / "cut.tif", geotiff("mask.tif", np.zeros((150, 200), np.uint8)), "truncated"


BAD_INPUTS = {
    "missing image": lambda g, t: (t / "nope.tif", g("mask.tif", np.zeros((150, 200), np.uint8)), "does not exist"),
    "missing label": lambda g, t: (g("img.tif", _rgb()), t / "gone.tif", "does not exist"),
    "not a raster": _junk,
    "truncated tiff": _truncated,
    "label size": lambda g, t: (g("img.tif", _rgb()), g("small.tif", np.zeros((150, 199), np.uint8)),
                                "199x150 pixels but image"),
    "label transform": lambda g, t: (g("img.tif", _rgb()), g("moved.tif", np.zeros((150, 200), np.uint8),
                                     transform=rasterio.transform.from_origin(500100.0, 5300000.0, 0.5, 0.5)),
                                     "transform"),
    "polygons outside": lambda g, t: (g("img.tif", _rgb()), _polygons(t / "far.geojson", offset=100_000.0),
                                      "none of its 1 building polygons overlaps"),
    "two bands": lambda g, t: (g("img.tif", _rgb()[:2]), g("mask.tif", np.zeros((150, 200), np.uint8)),
                               "has 2 band"),
    "uint16 unscaled": lambda g, t: (g("img.tif", _rgb(dtype=np.uint16)), _polygons(t / "b.geojson"),
                                     "input.scale_max"),
}


def test_images_with_the_same_stem_are_refused(geotiff, tmp_path):
    images = [str(geotiff("a/city.tif", _rgb())), str(geotiff("b/city.tif", _rgb()))]
    labels = [str(_polygons(tmp_path / "one.geojson")), str(_polygons(tmp_path / "two.geojson"))]
    with pytest.raises(InputError, match=r"b[/\\]city.tif: has the same file stem as .*a[/\\]city.tif"):
        prepare_dataset(images, labels, str(tmp_path / "ds"), config())
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(case, geotiff, tmp_path, ray_local):
    image, label, problem = BAD_INPUTS[case](geotiff, tmp_path)
    culprit = image if case in ("missing image", "not a raster", "truncated tiff", "two bands", "uint16 unscaled") \
        else label
    out = tmp_path / "out" / "ds"
    with pytest.raises(InputError) as info:
        prepare_dataset([str(image)], [str(label)], str(out), config())
    message = str(info.value)
    assert "\n" not in message and str(culprit) in message and problem in message, message
    assert not out.parent.exists() or not leftovers(out)


def test_corrupt_block_found_mid_run_leaves_nothing(geotiff, tmp_path, ray_local, capsys):
    """A block that fails only when read (the header and last block are fine) still fails cleanly. The other
    mosaic's task is let finish, never cancelled (Ray 2.60 can crash the driver on a cancel), and then
    its patches are removed too."""
    # a_img.tif sorts first, so its task is submitted first and fails within a second, while big.tif's
    # task (seconds of work) has just started.
    big = geotiff("big.tif", _rgb(4096, 4096))
    image = geotiff("a_img.tif", _rgb(512, 512), tiled=True, blockxsize=128, blockysize=128, compress="deflate")
    corrupt_middle_block(image)
    out = tmp_path / "ds"
    labels = [str(_polygons(tmp_path / "img.geojson")), str(_polygons(tmp_path / "big.geojson"))]
    with pytest.raises(InputError, match=r"a_img\.tif"):
        prepare_dataset([str(image), str(big)], labels, str(out), config())
    assert leftovers(out) == []
    assert "waiting for 1 other mosaic task(s) to end" in capsys.readouterr().out  # big.tif: still being cut


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "prepare.py"), "--images", str(tmp_path / "no.tif"),
                             "--labels", str(tmp_path / "no.geojson"), "--output", str(tmp_path / "ds")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'no.tif'}: does not exist"]
    assert not (tmp_path / "ds").exists()


# --- planning, without Ray -------------------------------------------------------------------------------

def test_split_shares_follow_the_ratios_and_the_seed():
    cfg = load_config(None).prepare
    splits = assign_splits([100] * 200, cfg)
    shares = [splits.count(s) / 200 for s in SPLITS]
    assert np.allclose(shares, [0.7, 0.15, 0.15], atol=0.01)
    assert splits == assign_splits([100] * 200, cfg)
    assert splits != assign_splits([100] * 200, load_config(None, ["prepare.seed=1"]).prepare)
    for n in (3, 4, 5):  # few squares: val and test still get one each
        assert set(assign_splits([100] * n, cfg)) == set(SPLITS)
    assert assign_splits([100], cfg) == ["train"]
    no_test = load_config(None, ["prepare.val_ratio=0.3", "prepare.test_ratio=0"]).prepare
    assert "test" not in assign_splits([100] * 10, no_test)


def test_patches_never_leave_their_square():
    width, height, tile = 1000, 700, 128
    for square in (Square(0, 0, 512, 512, "train"), Square(512, 512, 188, 488, "val")):
        tops, lefts = square_grid(square, width, height, tile, 32)
        for starts, first, length, edge in ((tops, square.row, square.height, height),
                                            (lefts, square.col, square.width, width)):
            assert starts[0] == first and starts == sorted(set(starts))
            assert all(b - a <= tile - 32 for a, b in itertools.pairwise(starts))  # overlap at least 32
            end = first + length
            if end < edge:  # shared with the next square: the last patch ends exactly there
                assert starts[-1] + tile == end
            else:  # the mosaic's edge: covered, the remainder padded
                assert starts[-1] < end <= starts[-1] + tile


def test_imagery_smaller_than_a_few_split_blocks_gets_smaller_squares_so_no_split_is_empty(city, ray_local, tmp_path):
    """1000 x 700 px is one square of the default 1536: val and test would be empty. Squares halve (spatial,
    seeded) until each split has one, and the dataset has patches in every split."""
    plan = plan_dataset([str(city.image)], [str(city.labels)], str(tmp_path / "ds"),
                        config("prepare.split_block=1536"))
    assert plan.split_block == 384
    assert {square.split for job in plan.jobs for square in job.squares} == set(SPLITS)
    summary = run_plan(plan)
    assert all(summary.patches[split] > 0 for split in SPLITS) and summary.split_block == 384
    assert all(list_pairs(str(tmp_path / "ds"), split) for split in SPLITS)


def test_imagery_too_small_for_three_splits_is_one_line_naming_split_block(geotiff, tmp_path):
    image = geotiff("speck.tif", np.full((3, 100, 200), 90, np.uint8))
    label = geotiff("speck_label.tif", np.zeros((100, 200), np.uint8))
    with pytest.raises(InputError) as error:
        plan_dataset([str(image)], [str(label)], str(tmp_path / "ds"), config())
    assert str(error.value) == ("config key 'prepare.split_block' has value 512: even squares of tile_size 128 give "
                                "the imagery only 2 square(s), too few for train, val, test; give more imagery or "
                                "set a split's ratio to 0")
    assert not (tmp_path / "ds").exists()


def test_target_gsd_cuts_patches_from_the_mosaic_resampled_to_it(city, raster_ds, ray_local, tmp_path):
    """The 0.5 m city prepared at 1.0 m: a quarter of the pixels, image and labels on the same coarse grid
    (a label raster resampled, polygons burned on it), and the manifest says 1.0 m."""
    datasets = {}
    for name, labels in (("raster", city.labels), ("polygons", city.buildings)):
        out = tmp_path / name
        summary = prepare_dataset([str(city.image)], [str(labels)], str(out), config("input.target_gsd=1.0"))
        datasets[name] = manifest(out)
        assert len(datasets[name]) + summary.skipped_nodata == len(tile_windows(500, 350, 128, 0, pad_end=True))
        assert {float(row["gsd_m"]) for row in datasets[name]} == {1.0} and training_gsd(str(out)) == 1.0
    with rasterio.open(city.image) as src:
        for row in datasets["raster"]:
            r, c = int(row["row"]), int(row["col"])
            image = decode_image((tmp_path / "raster" / row["image"]).read_bytes(), row["image"])
            coarse = src.read(window=Window(2 * c, 2 * r, 256, 256), out_shape=(3, 128, 128), boundless=True,
                              resampling=rasterio.enums.Resampling.bilinear).transpose(1, 2, 0)
            h, w = int(row["height"]), int(row["width"])
            assert np.abs(image[:h, :w].astype(int) - coarse[:h, :w]).mean() < 1  # same ground (0.5 px off: 3.6)
            from_raster, from_polygons = (decode_label((tmp_path / name / row["label"]).read_bytes(), row["label"])
                                          for name in ("raster", "polygons"))
            assert (from_raster != from_polygons).mean() < 0.03  # edge pixels only

"""segcore.raster.io: validity from GDAL's masks, GCP/RPC georeference, VRT sources, rasters over HTTP(S)."""
from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.control import GroundControlPoint
from rasterio.enums import Resampling
from rasterio.rpc import RPC
from rasterio.windows import Window

from segcore.config import HTTPConfig, InputConfig
from segcore.errors import InputError
from segcore.raster.io import (
    check_readable,
    inspect_raster,
    open_raster,
    read_rgb,
    resampled_view,
    write_ground_control,
)
from tests.conftest import TEST_TRANSFORM, UTM_33N, write_geotiff

RGB = np.random.default_rng(0).integers(1, 255, (3, 40, 60), dtype=np.uint8)  # no pixel is 0
HOLE = (slice(5, 25), slice(10, 30))  # the invalid part of each test raster


def hole() -> np.ndarray:
    invalid = np.zeros(RGB.shape[1:], bool)
    invalid[HOLE] = True
    return invalid


def read_all(path, input_cfg: InputConfig | None = None, window: Window | None = None):
    with open_raster(str(path)) as dataset:
        return read_rgb(dataset, window or Window(0, 0, dataset.width, dataset.height), input_cfg or InputConfig())


def assert_hole_is_invalid(rgb: np.ndarray, valid: np.ndarray) -> None:
    assert np.array_equal(valid, ~hole())
    assert not rgb[:, ~valid].any(), "masked pixels must be 0"
    assert np.array_equal(rgb[:, valid], RGB[:, valid])


def write_masked(path, internal: bool) -> None:
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=internal), \
            rasterio.open(path, "w", driver="GTiff", width=60, height=40, count=3, dtype="uint8", crs=UTM_33N,
                          transform=TEST_TRANSFORM) as dst:
        dst.write(RGB)
        dst.write_mask(np.where(hole(), 0, 255).astype(np.uint8))


def test_alpha_band_marks_invalid_pixels(tmp_path):
    alpha = np.where(hole(), 0, 255).astype(np.uint8)
    path = write_geotiff(tmp_path / "rgba.tif", np.concatenate([RGB, alpha[None]]), photometric="RGB", alpha="YES")
    assert_hole_is_invalid(*read_all(path))


def test_internal_mask_band_marks_invalid_pixels(tmp_path):
    write_masked(tmp_path / "internal.tif", internal=True)
    assert [p.name for p in tmp_path.iterdir()] == ["internal.tif"]  # the mask is inside the GeoTIFF
    assert_hole_is_invalid(*read_all(tmp_path / "internal.tif"))


def test_external_msk_file_marks_invalid_pixels(tmp_path):
    write_masked(tmp_path / "external.tif", internal=False)
    assert (tmp_path / "external.tif.msk").is_file()
    assert_hole_is_invalid(*read_all(tmp_path / "external.tif"))
    (tmp_path / "external.tif.msk").unlink()  # the same pixels without their .msk: all valid
    rgb, valid = read_all(tmp_path / "external.tif")
    assert valid.all() and np.array_equal(rgb, RGB)


def test_nodata_value_marks_pixels_whose_bands_all_equal_it(tmp_path):
    pixels = RGB.copy()
    pixels[(slice(None), *HOLE)] = 0
    pixels[0, 0, 0] = 0  # one band at nodata is not enough
    rgb, valid = read_all(write_geotiff(tmp_path / "nodata.tif", pixels, nodata=0))
    assert np.array_equal(valid, ~hole())
    assert not rgb[:, ~valid].any() and rgb[1, 0, 0] == RGB[1, 0, 0]


def test_config_nodata_overrides_the_rasters_own_validity(tmp_path):
    pixels = RGB.copy()
    pixels[(slice(None), *HOLE)] = 7
    pixels[:, 30:, :] = 0  # the raster's own nodata value, which the config's replaces
    path = write_geotiff(tmp_path / "nodata.tif", pixels, nodata=0)
    rgb, valid = read_all(path, InputConfig(nodata=7))
    assert np.array_equal(valid, ~hole())
    assert np.array_equal(rgb[:, valid], pixels[:, valid])
    write_masked(tmp_path / "masked.tif", internal=True)  # and over a mask band
    _, valid = read_all(tmp_path / "masked.tif", InputConfig(nodata=7))
    assert valid.all()


def test_window_past_the_edges_is_invalid_padding_around_the_mask(tmp_path):
    write_masked(tmp_path / "internal.tif", internal=True)
    rgb, valid = read_all(tmp_path / "internal.tif", window=Window(-10, -10, 80, 60))
    inner = (slice(10, 50), slice(10, 70))
    assert np.array_equal(valid[inner], ~hole()) and valid.sum() == (~hole()).sum()
    assert not rgb[:, ~valid].any()


GCPS = [GroundControlPoint(0, 0, 500000.0, 5300000.0, 0.0, "1"),
        GroundControlPoint(0, 60, 500030.5, 5300001.0, 0.0, "2"),
        GroundControlPoint(40, 0, 499999.0, 5299980.0, 12.5, "3"),
        GroundControlPoint(40, 60, 500029.0, 5299981.5, 3.0, "4")]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # outputs with GCPs only
def test_gcp_georeference_round_trips_to_a_written_geotiff_and_its_cog(tmp_path):
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", width=60, height=40, count=3, dtype="uint8",
                       gcps=GCPS, crs=UTM_33N) as dst:
        dst.write(RGB)
    info = pickle.loads(pickle.dumps(inspect_raster(str(tmp_path / "scene.tif"))))  # as it travels to Ray workers
    assert not info.georeferenced and len(info.gcps) == 4 and info.rpcs is None
    with rasterio.open(tmp_path / "mask.tif", "w", driver="GTiff", width=60, height=40, count=1,
                       dtype="uint8") as dst:
        dst.write(np.zeros((1, 40, 60), np.uint8))
        write_ground_control(dst, info)
    rasterio.shutil.copy(tmp_path / "mask.tif", tmp_path / "cog.tif", driver="COG")  # as the mask writer does
    for name in ("mask.tif", "cog.tif"):
        with rasterio.open(tmp_path / name) as src:
            points, crs = src.gcps
            assert crs == rasterio.crs.CRS.from_string(UTM_33N)
            assert [(p.row, p.col, p.x, p.y, p.z, p.id) for p in points] == \
                [(p.row, p.col, p.x, p.y, p.z, p.id) for p in GCPS]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_rpcs_round_trip_to_a_written_geotiff(tmp_path):
    rpcs = RPC(height_off=10.0, height_scale=500.0, lat_off=45.1, lat_scale=0.05, long_off=13.2, long_scale=0.05,
               line_off=20.0, line_scale=20.0, samp_off=30.0, samp_scale=30.0, err_bias=1.5, err_rand=0.5,
               line_num_coeff=[0.01 * i for i in range(20)], line_den_coeff=[1.0] + [0.0] * 19,
               samp_num_coeff=[0.02 * i for i in range(20)], samp_den_coeff=[1.0] + [0.0] * 19)
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", width=60, height=40, count=3, dtype="uint8",
                       rpcs=rpcs) as dst:
        dst.write(RGB)
    info = pickle.loads(pickle.dumps(inspect_raster(str(tmp_path / "scene.tif"))))
    with rasterio.open(tmp_path / "mask.tif", "w", driver="GTiff", width=60, height=40, count=1,
                       dtype="uint8") as dst:
        dst.write(np.zeros((1, 40, 60), np.uint8))
        write_ground_control(dst, info)
    with rasterio.open(tmp_path / "mask.tif") as src:
        written = src.rpcs.to_dict()
    for key, value in rpcs.to_dict().items():
        assert np.allclose(written[key], value), key


def write_vrt(path, sources: list[tuple[str, int]]) -> None:
    """A 60 x 40 3-band VRT of 30-column-wide GeoTIFF tiles placed at the given column offsets."""
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{band}">' + "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{name}</SourceFilename><SourceBand>{band}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="30" ySize="40"/><DstRect xOff="{col}" yOff="0" xSize="30" ySize="40"/>'
            "</SimpleSource>" for name, col in sources) + "</VRTRasterBand>" for band in (1, 2, 3))
    path.write_text(f'<VRTDataset rasterXSize="60" rasterYSize="40"><SRS>{UTM_33N}</SRS>'
                    f'<GeoTransform>500000, 0.5, 0, 5300000, 0, -0.5</GeoTransform>{bands}</VRTDataset>')


@pytest.mark.parametrize("missing", ["left.tif", "right.tif"])  # the right one holds the last pixel
def test_vrt_with_a_missing_source_names_it(missing, tmp_path):
    for name, col in (("left.tif", 0), ("right.tif", 30)):
        write_geotiff(tmp_path / name, RGB[:, :, col:col + 30])
    write_vrt(tmp_path / "mosaic.vrt", [("left.tif", 0), ("right.tif", 30)])
    with open_raster(str(tmp_path / "mosaic.vrt")) as dataset:
        check_readable(dataset, str(tmp_path / "mosaic.vrt"))
        assert np.array_equal(dataset.read(), RGB)
    (tmp_path / missing).unlink()
    with open_raster(str(tmp_path / "mosaic.vrt")) as dataset, pytest.raises(InputError) as error:
        check_readable(dataset, str(tmp_path / "mosaic.vrt"))
    assert str(error.value) == f"{tmp_path / 'mosaic.vrt'}: VRT source {tmp_path / missing} does not exist"


# Over HTTP(S): the session's loopback file server (tests/http_server.py). GDAL remembers what it learnt
# about a URL for the life of the process, so each test serves its own file names.
QUICK = HTTPConfig(timeout_s=0.5, max_retries=0, retry_delay_s=0.05)


@pytest.fixture
def served(http_files, request):
    """Files served under names of this test's own: NAME.tif (masked, 60 x 40) and big-NAME.tif (256 x 256 noise,
    tiled, so that its pixels lie past the first 16 KiB that GDAL reads on opening). Yields NAME.tif."""
    name = re.sub(r"\W+", "-", request.node.name) + ".tif"
    write_masked(http_files.root / name, internal=True)
    noise = np.random.default_rng(1).integers(1, 255, (3, 256, 256), dtype=np.uint8)
    write_geotiff(http_files.root / f"big-{name}", noise, tiled=True, blockxsize=128, blockysize=128)
    yield name
    for path in (http_files.root / name, http_files.root / f"big-{name}"):
        path.unlink()


def read_url(url: str, http: HTTPConfig = QUICK):
    with open_raster(url, http=http) as dataset:
        return read_rgb(dataset, Window(0, 0, dataset.width, dataset.height), InputConfig())


def test_http_raster_reads_as_the_local_one_mask_included(http_files, served):
    assert_hole_is_invalid(*read_url(f"{http_files.http}/files/{served}"))


def test_https_raster_reads_with_the_ca_bundle_from_the_environment(http_files, served, monkeypatch):
    url = f"{http_files.https}/files/{served}"
    with pytest.raises(InputError, match=r"^https://127\.0\.0\.1:\d+/files/\S+: CURL error: SSL certificate problem: "
                       r"self-signed certificate \(for a private CA, set CURL_CA_BUNDLE"):
        open_raster(url, http=QUICK)
    monkeypatch.setenv("CURL_CA_BUNDLE", str(http_files.ca))
    assert_hole_is_invalid(*read_url(url + "?trusted"))


@pytest.mark.parametrize(("mode", "problem"), [
    ("norange", "the server does not support HTTP range requests"),
    ("slow", "timed out after 0.5 s (http.timeout_s)"),
    ("flaky/1", "could not be read over HTTP (HTTP response code: 503)"),
    ("files", "does not exist (HTTP 404)"),
], ids=["no ranges", "timeout", "server error", "not found"])
def test_http_failures_are_one_line_naming_the_url(mode, problem, http_files, served):
    file = "nope.tif" if mode == "files" else f"big-{served}"
    with pytest.raises(InputError) as error:
        open_raster(f"{http_files.http}/{mode}/{file}?token=s3cr3t", http=QUICK)
    # The query string is left out: it may hold a signature or a token.
    assert str(error.value).startswith(f"{http_files.http}/{mode}/{file}?...: {problem}")
    assert "\n" not in str(error.value)


def test_http_retries_ride_out_server_errors(http_files, served):
    url = f"{http_files.http}/flaky/2/{served}"
    assert_hole_is_invalid(*read_url(url, HTTPConfig(timeout_s=5, max_retries=2, retry_delay_s=0.05)))


def test_http_timeout_holds_for_reads_after_opening(http_files, served):
    url = f"{http_files.http}/slowtail/big-{served}"  # answers at once for the header, late for the pixels
    with open_raster(url, http=QUICK) as dataset, pytest.raises(InputError, match=rf"^{url}: read failed at window"):
        read_rgb(dataset, Window(128, 128, 128, 128), InputConfig())


def _doubled(mask: np.ndarray) -> np.ndarray:
    return mask.repeat(2, axis=0).repeat(2, axis=1)


@pytest.mark.parametrize("kind", ["alpha", "internal mask", "nodata"])
def test_resampled_reads_keep_the_mask_on_the_new_grid(kind, tmp_path):
    """Reading at twice the resolution, by window (read_rgb's scale) or through a resampled view of the whole
    raster (resampled_view): the hole is the same ground, now 2 x 2 pixels each."""
    path = tmp_path / "in.tif"
    if kind == "alpha":
        alpha = np.where(hole(), 0, 255).astype(np.uint8)
        write_geotiff(path, np.concatenate([RGB, alpha[None]]), photometric="RGB", alpha="YES")
    elif kind == "internal mask":
        write_masked(path, internal=True)
    else:
        write_geotiff(path, np.where(hole(), 0, RGB).astype(np.uint8), nodata=0)
    with open_raster(str(path)) as dataset:
        rgb, valid = read_rgb(dataset, Window(0, 0, 60, 40), InputConfig(), scale=2.0)
        with resampled_view(dataset, 120, 80, Resampling.bilinear) as view:
            assert view.transform.a == pytest.approx(dataset.transform.a / 2) and view.crs == dataset.crs
            view_rgb, view_valid = read_rgb(view, Window(0, 0, 120, 80), InputConfig())
    for pixels, mask in ((rgb, valid), (view_rgb, view_valid)):
        assert pixels.shape == (3, 80, 120) and np.array_equal(mask, ~_doubled(hole()))
        assert not pixels[:, ~mask].any()
        inside = _doubled(~hole())
        inside[1:-1] &= inside[:-2] & inside[2:]  # away from the hole's rim, where bilinear mixes in masked pixels
        assert np.abs(pixels[:, inside].astype(int).mean() - RGB[:, ~hole()].mean()) < 3


def test_raster_without_mask_or_nodata_is_valid_everywhere_inside_it(tmp_path):
    path = tmp_path / "plain.tif"
    write_geotiff(path, RGB)
    rgb, valid = read_all(path)
    assert valid.all() and np.array_equal(rgb, RGB) and rgb.flags.writeable
    rgb, valid = read_all(path, window=Window(50, -5, 20, 20))  # past the right and top edges
    assert np.array_equal(valid, np.pad(np.ones((15, 10), bool), ((5, 0), (0, 10))))
    assert np.array_equal(rgb[:, 5:, :10], RGB[:, :15, 50:]) and not rgb[:, ~valid].any()

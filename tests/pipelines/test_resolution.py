"""Ground resolution: a model knows the ground sample distance it was trained at (its checkpoint records it),
and segment reads imagery of another resolution resampled to it, writing the outputs on the input's own grid.

The model is a stand-in that finds 8 m roofs only at 0.5 m per pixel (tests.inputs.BuildingSizeModel); the
town is the same ground rendered at 0.25, 0.5 and 1.0 m."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from segcore.config import load_config
from segcore.inference import predict_block, to_mask
from segcore.metrics import ConfusionCounts
from tests.helpers import by_key, read_band, segment
from tests.inputs import BuildingSizeModel, tiny_checkpoint, write_square_town

SEGMENT = ("segment.tile_size=128", "segment.overlap=48", "segment.block_size=320", "segment.batch_size=4",
           "segment.preview_size=0")
RESOLUTIONS = (0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    """Every town segmented by a model that records its 0.5 m training resolution (with a 0.25 m town that is
    nodata on its left too): the output folder, the summary's entries by key, and what segment printed."""
    folder = tmp_path_factory.mktemp("town")
    towns = {gsd: write_square_town(folder / f"town_{gsd}m.tif", gsd) for gsd in RESOLUTIONS}
    with rasterio.open(towns[0.25][0]) as src:
        rgb, profile = src.read(), src.profile
    rgb[:, :, :300] = 0  # a nodata strip that ends inside a resampled block
    with rasterio.open(folder / "holey.tif", "w", **dict(profile, nodata=0)) as dst:
        dst.write(rgb)
    checkpoint = tiny_checkpoint(folder / "model.pt", gsd_m=0.5)
    images = [path for path, _ in towns.values()] + [folder / "holey.tif"]
    summary, err = segment(images, folder / "out", checkpoint, load_config(None, list(SEGMENT)),
                           model_factory=BuildingSizeModel)
    assert summary["ok"] == len(images), summary
    return towns, (folder / "out", by_key(summary), err)


def iou(out, image, truth) -> float:
    mask_path = out / image.stem / "mask.tif"
    with rasterio.open(mask_path) as mask, rasterio.open(image) as source:  # the input's own grid
        assert (mask.shape, mask.transform, mask.crs) == (source.shape, source.transform, source.crs)
    mask = read_band(mask_path)
    return ConfusionCounts.from_arrays(mask == 1, truth > 0, mask != 255).iou


def as_read(image: Path, truth: np.ndarray) -> float:
    """IoU of the stand-in run on the image's own grid (what segment did before it knew resolutions)."""
    with rasterio.open(image) as src:
        rgb = src.read()
    prediction = predict_block(BuildingSizeModel(), rgb, np.ones(truth.shape, bool), tile_size=128, overlap=48,
                               batch_size=4)
    return ConfusionCounts.from_arrays(to_mask(prediction.probability, 0.5) == 1, truth > 0).iou


@pytest.mark.parametrize("gsd", [0.25, 1.0])
def test_imagery_at_another_resolution_is_resampled_to_the_models(runs, gsd):
    towns, (out, _, _) = runs
    home, resampled = iou(out, *towns[0.5]), iou(out, *towns[gsd])
    assert home > 0.8  # the stand-in trims roof corners
    assert as_read(*towns[gsd]) < 0.2, "the stand-in should miss roofs of the wrong size in pixels"
    assert resampled > 0.75 and resampled > home - 0.08, (home, resampled)


def test_resampling_is_said_and_only_where_the_resolution_differs(runs):
    towns, (_, _, err) = runs
    for gsd in RESOLUTIONS:
        note = f"{towns[gsd][0]}: {gsd:.3g} m per pixel, read resampled to 0.5 m"
        assert (note in err) == (gsd != 0.5), err


def test_nodata_stays_nodata_on_the_input_grid(runs):
    out, entries, _ = runs[1]
    mask = read_band(out / "holey" / "mask.tif")
    assert (mask[:, :300] == 255).all() and (mask[:, 300:] != 255).all()
    assert np.count_nonzero(mask[:, 300:] == 1) > 0
    assert entries["holey"]["metrics"]["blocks"]["total"] == entries["town_0.25m"]["metrics"]["blocks"]["total"]

"""Ray-free inference: tiling, blending and thresholding on the model's device."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from segcore.inference import predict_block, to_mask, to_probability_bytes
from segcore.model import build_model
from segcore.raster.blend import EDGE_FLOOR, weight_window
from segcore.raster.grid import block_tiles, segment_blocks
from segcore.synth import generate_city


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared machine more threads only contend (and timings wobble)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def city_rgb(tmp_path_factory) -> np.ndarray:
    """A 512 x 512 aerial-like uint8 RGB image [3, h, w]."""
    paths = generate_city(tmp_path_factory.mktemp("city"), 512, 512, seed=3)
    with rasterio.open(paths.image) as src:
        return src.read([1, 2, 3])


def local_cnn() -> nn.Module:
    """A seeded 3-layer CNN with a 7 x 7 receptive field: tiles see all the context it uses, bar their rims."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 1, 3, padding=1)).eval()


def decisive(model: nn.Module, rgb: np.ndarray) -> nn.Module:
    """Rescale the last layer so logits on `rgb` have mean 0 and std 4, as a trained model's are spread."""
    with torch.no_grad():
        logits = model(torch.from_numpy(rgb)[None].float() / 255)
        scale = 4.0 / logits.std()
        last = model[-1]
        last.weight.mul_(scale)
        last.bias.copy_((last.bias - logits.mean()) * scale)
    return model


def whole_probability(model: nn.Module, rgb: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(rgb)[None].float() / 255))[0, 0].numpy()


def probability_by_blocks(model, rgb, valid, *, block_size, tile_size, overlap, batch_size=4) -> torch.Tensor:
    """What the pipeline does, without Ray: blocks on the raster's tile grid, their cores' probabilities."""
    height, width = valid.shape
    probability = torch.empty((height, width))
    for block in segment_blocks(width, height, block_size, tile_size, overlap):
        read = block.read_window
        rows = slice(int(read.row_off), int(read.row_off + read.height))
        cols = slice(int(read.col_off), int(read.col_off + read.width))
        prediction = predict_block(model, rgb[:, rows, cols], valid[rows, cols], tile_size=tile_size,
                                   overlap=overlap, batch_size=batch_size,
                                   origins=block_tiles(block, width, height, tile_size, overlap))
        core = block.core
        probability[core.row_off:core.row_off + core.height, core.col_off:core.col_off + core.width] = \
            block.crop(prediction.probability)
    return probability


def segment_by_blocks(model, rgb, valid, *, block_size, tile_size, overlap, threshold=0.5) -> np.ndarray:
    return to_mask(probability_by_blocks(model, rgb, valid, block_size=block_size, tile_size=tile_size,
                                         overlap=overlap), threshold)


def test_weight_window_is_smooth_positive_and_sums_to_one_across_a_seam():
    window = weight_window(128, 32).numpy()
    assert window.shape == (128, 128)
    assert np.allclose(window, window.T) and np.allclose(window, window[::-1, ::-1])
    assert window.min() >= EDGE_FLOOR ** 2 and window.max() == pytest.approx(1.0)
    ramp = window[64]
    # Where one tile fades out, the next (stride 96) fades in: together they weigh about 1 everywhere.
    assert np.allclose(ramp[96:] + ramp[:32], 1.0, atol=2 * EDGE_FLOOR)
    assert np.all(weight_window(64, 0).numpy() == 1.0)


def test_tiled_blended_output_matches_one_whole_image_pass(city_rgb):
    model = decisive(local_cnn(), city_rgb)
    valid = np.ones(city_rgb.shape[1:], bool)
    tiled = predict_block(model, city_rgb, valid, tile_size=128, overlap=32, batch_size=8)
    whole = whole_probability(model, city_rgb)
    assert tiled.tiles_computed == 25 and tiled.tiles_skipped == 0
    assert np.abs(tiled.probability.numpy() - whole).max() < 0.05
    agree = (to_mask(tiled.probability, 0.5) == to_mask(torch.from_numpy(whole), 0.5)).mean()
    assert agree >= 0.999, agree


def test_refinenet_blended_tiles_track_the_whole_pass_far_better_than_plain_tiling(city_rgb):
    """A whole-image RefineNet pass sees more context than any tile, and a random-weights model has no margin
    around its threshold (outputs near 0.5), so this compares probabilities: with overlap and blending the
    tiled output follows the whole pass closely, where abutting tiles without overlap do not."""
    torch.manual_seed(0)
    model = build_model("refinenet", "resnet18", 16, pretrained=False).eval()
    valid = np.ones(city_rgb.shape[1:], bool)
    whole = whole_probability(model, city_rgb).ravel()
    blended, plain = (predict_block(model, city_rgb, valid, tile_size=128, overlap=overlap,
                                    batch_size=8).probability.numpy().ravel() for overlap in (32, 0))
    assert np.corrcoef(blended, whole)[0, 1] > 0.9
    assert np.abs(blended - whole).mean() < 0.5 * np.abs(plain - whole).mean()


@pytest.mark.parametrize("blocks", [(128, 512), (96, 1000)])
def test_every_block_size_gives_the_same_probabilities_with_a_real_cnn(city_rgb, blocks):
    """On one tile grid, every block blends the same tiles with the same weights: a RefineNet's probabilities
    agree across block sizes up to batching noise, well within 1/255 (the probability file's step)."""
    torch.manual_seed(0)
    model = build_model("refinenet", "resnet18", 16, pretrained=False).eval()
    valid = np.ones(city_rgb.shape[1:], bool)
    small, large = (probability_by_blocks(model, city_rgb, valid, block_size=size, tile_size=64, overlap=16,
                                          batch_size=batch) for size, batch in zip(blocks, (3, 8), strict=True))
    assert (small - large).abs().max() < 1e-5
    assert (to_probability_bytes(small).astype(int) - to_probability_bytes(large)).__abs__().max() <= 1


def pixelwise_model() -> nn.Module:
    """An exact per-pixel function (1x1 convolution): every tiling must give the same mask."""
    model = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[[[6.0]], [[-4.0]], [[-1.5]]]]))
        model.bias.fill_(0.123)
    return model.eval()


def test_pixelwise_model_gives_identical_masks_whatever_block_tile_and_overlap():
    rng = np.random.default_rng(1)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (389, 517, 3), dtype=np.uint8), (0, 0), 3).transpose(2, 0, 1)
    rgb = np.ascontiguousarray(rgb)
    valid = np.ones((389, 517), bool)
    valid[150:300, 40:200] = False
    model = pixelwise_model()
    probability = whole_probability(model, rgb)
    assert np.abs(probability - 0.5).min() > 1e-4  # no pixel sits on the threshold, so rounding cannot flip one
    expected = np.where(valid, probability >= 0.5, 255).astype(np.uint8)
    for block_size, tile_size, overlap in ((2304, 384, 64), (160, 64, 16), (100, 96, 0), (200, 64, 40)):
        mask = segment_by_blocks(model, rgb, valid, block_size=block_size, tile_size=tile_size, overlap=overlap)
        assert np.array_equal(mask, expected), (block_size, tile_size, overlap)


def test_nodata_tiles_are_skipped_and_marked():
    rgb = np.full((3, 256, 320), 128, np.uint8)
    valid = np.ones((256, 320), bool)
    valid[:, :160] = False  # tile 64 stride 48: columns 0, 48, 96 lie wholly in nodata
    prediction = predict_block(pixelwise_model(), rgb, valid, tile_size=64, overlap=16, batch_size=3)
    rows, cols = 5, 7  # starts 0, 48, ..., 192 (rows) and 0, 48, ..., 256 (cols)
    assert prediction.tiles_computed + prediction.tiles_skipped == rows * cols
    assert prediction.tiles_skipped == rows * 3
    assert np.isnan(prediction.probability[:, :160]).all() and not np.isnan(prediction.probability[:, 160:]).any()
    mask = to_mask(prediction.probability, 0.5)
    assert (mask[:, :160] == 255).all() and set(np.unique(mask[:, 160:])) <= {0, 1}
    assert (to_probability_bytes(prediction.probability)[:, :160] == 0).all()


def test_all_nodata_block_computes_nothing():
    prediction = predict_block(pixelwise_model(), np.zeros((3, 200, 200), np.uint8), np.zeros((200, 200), bool),
                               tile_size=64, overlap=16, batch_size=4)
    assert prediction.tiles_computed == 0 and np.isnan(prediction.probability).all()


def test_block_smaller_than_a_tile_is_padded_and_cropped_back():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    valid = np.ones((40, 50), bool)
    model = pixelwise_model()
    prediction = predict_block(model, rgb, valid, tile_size=128, overlap=32, batch_size=2)
    assert prediction.probability.shape == (40, 50) and prediction.tiles_computed == 1
    assert np.allclose(prediction.probability, whole_probability(model, rgb), atol=1e-6)


def test_thresholding_is_probability_at_least_threshold():
    probability = torch.tensor([[0.2, 0.45, 0.4499], [np.nan, 1.0, 0.0]], dtype=torch.float32)
    assert to_mask(probability, 0.45).tolist() == [[0, 1, 0], [255, 1, 0]]
    assert to_probability_bytes(probability).tolist() == [[51, 115, 115], [0, 255, 0]]


@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_tta_of_a_pixelwise_model_changes_nothing(tta):
    """A model that looks at each pixel alone sees the same pixel in every view: each view is turned back
    onto its own tile, or the averaged probabilities would smear."""
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (3, 150, 170), dtype=np.uint8)
    valid = np.ones((150, 170), bool)
    model = pixelwise_model()
    plain, averaged = (predict_block(model, rgb, valid, tile_size=64, overlap=16, batch_size=3, tta=mode).probability
                       for mode in ("none", tta))
    assert torch.allclose(plain, averaged, atol=1e-6)


def test_tta_averages_the_views_of_an_oriented_model():
    """A model that sees the pixel to its left (its output is not symmetric): flip averages its answer with
    the one seen mirrored (the pixel to the right), d4 with all eight neighbours' turned and mirrored views."""
    shift = nn.Conv2d(3, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        shift.weight.zero_()
        shift.weight[0, 0, 1, 0] = 8.0  # the red value one pixel to the left
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    valid = np.ones((64, 64), bool)
    red = np.pad(rgb[0].astype(np.float32) / 255, 1)  # zero padding, as the convolution's

    def from_neighbour(dr: int, dc: int) -> np.ndarray:
        return 1 / (1 + np.exp(-8.0 * red[1 + dr:65 + dr, 1 + dc:65 + dc]))

    expected = {"none": from_neighbour(0, -1), "flip": (from_neighbour(0, -1) + from_neighbour(0, 1)) / 2,
                "d4": (2 * sum(from_neighbour(dr, dc) for dr, dc in ((0, -1), (0, 1), (-1, 0), (1, 0)))) / 8}
    for tta, wanted in expected.items():
        got = predict_block(shift, rgb, valid, tile_size=64, overlap=0, batch_size=1, tta=tta).probability
        assert np.allclose(got.numpy(), wanted, atol=1e-5), tta

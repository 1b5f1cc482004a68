"""The reading side of the patch dataset: pairing files by stem, decoding images and labels (no Ray)."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from segcore.data.patches import decode_image, decode_label, encode_image, encode_label, list_pairs
from segcore.errors import InputError


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def test_image_round_trip_keeps_rgb_order():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red only
    out = decode_image(encode_image(rgb), "x.png")
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and np.array_equal(out, rgb)
    # A file written the usual cv2 way (BGR in memory) decodes to RGB.
    _ok, png = cv2.imencode(".png", rgb[..., ::-1].copy())
    assert np.array_equal(decode_image(png.tobytes(), "y.png"), rgb)


def test_grey_image_becomes_three_channels():
    _ok, png = cv2.imencode(".png", np.full((3, 3), 7, np.uint8))
    out = decode_image(png.tobytes(), "grey.png")
    assert out.shape == (3, 3, 3) and (out == 7).all()


def test_labels_become_zero_one():
    mask = np.array([[0, 1], [1, 0]], np.uint8)
    stored = cv2.imdecode(np.frombuffer(encode_label(mask), np.uint8), cv2.IMREAD_UNCHANGED)
    assert stored.ndim == 2 and set(np.unique(stored)) == {0, 255}
    assert np.array_equal(decode_label(encode_label(mask), "m.png"), mask)
    _, odd = cv2.imencode(".png", np.array([[0, 3], [128, 0]], np.uint8))
    assert np.array_equal(decode_label(odd.tobytes(), "odd.png"), mask)
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 1, 2] = 255  # a building drawn in red (BGR order) only
    colour[1, 0] = 255
    _ok, png = cv2.imencode(".png", colour)
    out = decode_label(png.tobytes(), "colour.png")
    assert out.shape == (2, 2) and out.dtype == np.uint8 and np.array_equal(out, mask)


@pytest.mark.parametrize("decode", [decode_image, decode_label])
def test_undecodable_bytes_name_the_file(decode):
    for data in (b"", b"not an image at all"):
        with pytest.raises(InputError, match=r"broken\.png"):
            decode(data, "s3://b/ds/train/images/broken.png")


def test_list_pairs_accepts_the_fork_layout(tmp_path):
    """The old workflow's folders: jpg or tif images, png labels, paired by stem; stray files are ignored."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    for stem, suffix in (("b", ".jpg"), ("a", ".tif"), ("c", ".png")):
        _write(tmp_path / "train" / "images" / f"{stem}{suffix}", rgb)
        _write(tmp_path / "train" / "labels" / f"{stem}.png", rgb[..., 0])
    (tmp_path / "train" / "images" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "train" / "labels" / "notes.txt").write_text("x")
    pairs = list_pairs(str(tmp_path), "train")
    assert [(Path(image).name, Path(label).name) for image, label in pairs] == [("a.tif", "a.png"), ("b.jpg", "b.png"),
                                                                 ("c.png", "c.png")]
    image = decode_image(Path(pairs[0][0]).read_bytes(), pairs[0][0])
    assert image.shape == (8, 8, 3)


def test_list_pairs_errors_name_the_folder_or_file(tmp_path):
    root = str(tmp_path)
    with pytest.raises(InputError, match=r"val[/\\]images: missing"):
        list_pairs(root, "val")
    with pytest.raises(InputError, match="split 'dev' is unknown"):
        list_pairs(root, "dev")
    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "val" / "labels").mkdir(parents=True)
    with pytest.raises(InputError, match=r"val[/\\]images: holds no images"):
        list_pairs(root, "val")
    _write(tmp_path / "val" / "images" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match=r"x\.png: no file with the same stem in .*val[/\\]labels"):
        list_pairs(root, "val")
    _write(tmp_path / "val" / "labels" / "x.png", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "val" / "labels" / "y.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match=r"y\.png: no file with the same stem in .*val[/\\]images"):
        list_pairs(root, "val")
    _write(tmp_path / "val" / "images" / "y.jpg", np.zeros((4, 4, 3), np.uint8))
    _write(tmp_path / "val" / "images" / "y.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="two files with stem 'y'"):
        list_pairs(root, "val")

"""Inputs for tests, good and bad: rasters of every awkward kind, patch sets, checkpoints (a tiny one, and
broken ones: random bytes, a pickle that runs code), and a small full disk."""
from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from segcore.checkpoint import Checkpoint
from segcore.config import InputConfig, ModelConfig
from segcore.model import build_model
from tests.conftest import write_geotiff

THRESHOLD = 0.493  # about the median probability of the random-weights model on the sample city


# ------------------------------------------------------------------------------------------- rasters

def read_city(path) -> tuple[np.ndarray, dict]:
    """(bands, h, w) pixels of a GeoTIFF and the keyword arguments that put a copy on its grid."""
    with rasterio.open(path) as src:
        return src.read(), dict(crs=src.crs, transform=src.transform)


def empty_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def truncated_copy(source: Path, path: Path) -> Path:
    """The first half of a real GeoTIFF: its header reads, its pixels do not."""
    data = Path(source).read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def png_named_tif(path: Path, rgb: np.ndarray) -> Path:
    """A PNG (no georeference) under a .tif name."""
    import cv2

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb.transpose(1, 2, 0)[..., ::-1]))
    assert ok
    path.write_bytes(buffer.tobytes())
    return path


def odd_raster(path: Path, kind: str, rgb: np.ndarray, grid: dict) -> Path:
    """A raster of `kind`: oneband, float32 (rgb / 255), uint16 (rgb * 257), nodata (all 0, nodata 0)."""
    if kind == "oneband":
        return write_geotiff(path, rgb[:1], **grid)
    if kind == "float32":
        return write_geotiff(path, (rgb.astype(np.float32) / np.float32(255)), **grid)
    if kind == "uint16":
        return write_geotiff(path, rgb.astype(np.uint16) * 257, **grid)
    if kind == "nodata":
        return write_geotiff(path, np.zeros_like(rgb), nodata=0, **grid)
    raise ValueError(kind)


def strip_raster(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A uint8 RGB raster of any shape (1 x 100000 included): a smooth random walk, image-like enough."""
    walk = np.cumsum(np.random.default_rng(seed).normal(0, 4, width * height))
    line = ((walk - walk.min()) / max(np.ptp(walk), 1e-9) * 200 + 20).astype(np.uint8).reshape(height, width)
    return write_geotiff(path, np.stack([line, line // 2 + 60, 255 - line]))


def polygons_in_lonlat(source: Path, path: Path) -> Path:
    """The sample city's building polygons reprojected to longitude/latitude (RFC 7946: no "crs" member)."""
    import json

    from rasterio.warp import transform_geom

    data = json.loads(Path(source).read_text())
    crs = data.pop("crs")["properties"]["name"]
    for feature in data["features"]:
        feature["geometry"] = transform_geom(crs, "EPSG:4326", feature["geometry"])
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------------- patches

def write_patch_set(root, counts=(("train", 24), ("val", 8), ("test", 8)), tile=64, seed=0):
    """Bright rectangles ("roofs") on a noisy green-grey background, and their 0/255 masks."""
    rng = np.random.default_rng(seed)
    for split, count in counts:
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.normal((90, 110, 80), 12, (tile, tile, 3))
            mask = np.zeros((tile, tile), np.uint8)
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, tile - 16, 2)
                h, w = rng.integers(8, 24, 2)
                mask[y:y + h, x:x + w] = 255
            image[mask > 0] = rng.normal((200, 120, 100), 10, (int((mask > 0).sum()), 3))
            bgr = np.clip(image, 0, 255).astype(np.uint8)[..., ::-1]
            cv2.imwrite(str(root / split / "images" / f"p{i:03d}.png"), bgr)
            cv2.imwrite(str(root / split / "labels" / f"p{i:03d}.png"), mask)
    return root



# ----------------------------------------------------------------------------------------- checkpoints

def tiny_checkpoint(path: Path, *, stored_backbone: str = "resnet18", seed: int = 0,
                    gsd_m: float | None = None) -> str:
    """A random-weights RefineNet-resnet18 (decoder 16) segcore checkpoint; `stored_backbone` may lie."""
    torch.manual_seed(seed)
    model = build_model("refinenet", "resnet18", 16, False)
    Checkpoint(ModelConfig(backbone=stored_backbone, decoder_width=16), InputConfig(), model.state_dict(),
               threshold=THRESHOLD, gsd_m=gsd_m).save(str(path))
    return str(path)


class _Payload:
    """Unpickling this runs a shell command: the canonical malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A torch.save'd dict whose pickle calls os.system('touch MARKER') when loaded without weights_only."""
    buffer = io.BytesIO()
    torch.save({"format": "segcore-checkpoint/1", "state_dict": _Payload(marker)}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def corrupt_middle_block(path: Path) -> Path:
    """Overwrite one inner tile of a tiled GeoTIFF: the header and the last pixel still read fine."""
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    data = bytearray(path.read_bytes())
    data[offset:offset + size] = b"\xff" * size
    path.write_bytes(bytes(data))
    return path


def random_bytes(path: Path, size: int = 4096, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


# ------------------------------------------------------------------------------------------- disk full

class Tmpfs:
    """A tmpfs of `size` mounted at `path` (needs root); `fill(leave)` leaves about `leave` bytes free."""

    def __init__(self, path: Path, size: str = "2m"):
        self.path, self.size = Path(path), size

    def __enter__(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(f"cannot mount a tmpfs at {self.path}: {result.stderr.strip()}")
        return self

    def free(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int) -> None:
        """Write a filler file so that about `leave` bytes stay free."""
        with open(self.path / ".filler", "wb") as handle:
            handle.write(b"\0" * max(0, self.free() - leave))

    def __exit__(self, *exc) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


class BrightnessModel(torch.nn.Module):
    """A decisive stand-in model for tests that must not depend on model noise: bright pixels (mean of the bands
    above 0.5) are buildings, with logits of at least 1.3 in magnitude on 8-bit input, so blending identical
    tiles can never move a pixel across the threshold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2000.0 * (x.float().mean(dim=1, keepdim=True) - 0.5)


class BuildingSizeModel(torch.nn.Module):
    """A stand-in model that knows how big buildings are, in pixels, as a model trained at one ground
    resolution does: a bright pixel is building when its 13 x 13 neighbourhood is at least 45 % bright (not a
    speck) and its 41 x 41 neighbourhood at most 35 % (not a plaza). Tuned to 8 m roofs at 0.5 m (16 px)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = (x.float().mean(dim=1, keepdim=True) > 0.5).float()
        small, big = (torch.nn.functional.avg_pool2d(bright, k, stride=1, padding=k // 2, count_include_pad=False)
                      for k in (13, 41))
        return 50.0 * torch.minimum(torch.minimum(bright - 0.5, small - 0.45), 0.35 - big)


def write_square_town(path: Path, gsd: float, *, side_m: float = 192.0) -> tuple[Path, np.ndarray]:
    """A town of 8 m square roofs on a 24 m grid, rendered at `gsd` metres per pixel (8 m a whole number of
    pixels) as a UTM GeoTIFF; its path and true mask. The same ground at any resolution."""
    size = round(side_m / gsd)
    centres = (np.arange(size) + 0.5) * gsd  # pixel centres in metres from the corner
    inside = (centres % 24.0 >= 8.0) & (centres % 24.0 < 16.0)
    truth = (inside[:, None] & inside[None, :]).astype(np.uint8)
    rgb = np.where(truth, 220, 60).astype(np.uint8)[None].repeat(3, axis=0)
    return write_geotiff(path, rgb, transform=from_origin(500000.0, 5300000.0, gsd, gsd)), truth

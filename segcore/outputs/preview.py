"""The preview PNG: the imagery, longest side `size` (never upscaled), buildings tinted and outlined.

It is built block by block from small pieces: each block's reader makes a thumbnail of its core at the
preview's scale (`thumbnail`), so the assembly never reads the mosaic again, and the mask (or, when footprints
are written, the final polygons) is drawn over it. Nodata is dark grey.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import shapely

from segcore.raster.cog import MASK_BUILDING, MASK_NODATA
from segcore.raster.grid import Block

FILL = np.array([255, 60, 30], np.float32)  # translucent red-orange over buildings
# Buildings show 55 % imagery and 45 % FILL: a lookup table per channel (OpenCV applies it in one pass).
TINT = np.rint(0.55 * np.arange(256, dtype=np.float32)[:, None] + 0.45 * FILL).astype(np.uint8).reshape(256, 1, 3)
EDGE = np.array([255, 230, 0], np.uint8)  # solid yellow outlines
NODATA = np.array([40, 40, 40], np.uint8)


def preview_scale(width: int, height: int, size: int) -> float:
    """Preview pixels per mosaic pixel: longest side `size`, never above 1."""
    return min(1.0, size / max(width, height))


def _span(start: int, length: int, scale: float) -> tuple[int, int]:
    """[first, end) of the preview pixels that show mosaic pixels [start, start + length)."""
    return math.floor(start * scale + 0.5), math.floor((start + length) * scale + 0.5)


def preview_window(block: Block, scale: float) -> tuple[slice, slice]:
    """Rows and columns of the preview a block's core fills (adjacent blocks fill adjacent slices)."""
    rows, cols = _span(block.row, block.height, scale), _span(block.col, block.width, scale)
    return slice(*rows), slice(*cols)


def thumbnail(rgb: np.ndarray, block: Block, scale: float) -> np.ndarray:
    """uint8 RGB [3, h', w'] of a block's core (uint8 RGB [3, h, w]) at the preview's scale (area averaging)."""
    rows, cols = preview_window(block, scale)
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    if 0 in shape:
        return np.zeros((3, *shape), np.uint8)
    # Band by band: OpenCV's area averaging of one plane is several times faster than of interleaved RGB, and
    # the planes need no transposed copy. The result is the same.
    return np.stack([cv2.resize(band, (shape[1], shape[0]), interpolation=cv2.INTER_AREA) for band in rgb])


class PreviewCanvas:
    """The preview of one mosaic, filled block by block, then rendered to PNG bytes."""

    def __init__(self, width: int, height: int, size: int):
        self.scale = preview_scale(width, height, size)
        shape = (max(1, math.floor(height * self.scale + 0.5)), max(1, math.floor(width * self.scale + 0.5)))
        self.rgb = np.zeros((*shape, 3), np.uint8)
        self.mask = np.full(shape, MASK_NODATA, np.uint8)
        self.footprints: np.ndarray | None = None  # (fill, outline) of drawn polygons, when footprints are written

    def add(self, block: Block, image: np.ndarray, mask: np.ndarray) -> None:
        """A block's thumbnail (`thumbnail`) and its core mask (shown with nearest-neighbour sampling)."""
        rows, cols = preview_window(block, self.scale)
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        if 0 in shape:
            return
        self.rgb[rows, cols] = image.transpose(1, 2, 0)
        self.mask[rows, cols] = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)

    def draw_polygons(self, geometry: Sequence[shapely.Geometry]) -> None:
        """Draw polygons given in mosaic pixel coordinates: the final footprints, shown instead of the raw mask."""
        if self.footprints is None:
            self.footprints = np.zeros((2, *self.mask.shape), np.uint8)
        fill, outline = self.footprints
        for polygon in shapely.get_parts(geometry):
            exterior, *holes = (self._points(ring) for ring in (polygon.exterior, *polygon.interiors))
            cv2.fillPoly(fill, [exterior], 1)
            if holes:
                cv2.fillPoly(fill, holes, 0)
            cv2.polylines(outline, [exterior, *holes], isClosed=True, color=1, thickness=1)

    def _points(self, ring) -> np.ndarray:
        return np.rint(shapely.get_coordinates(ring) * self.scale - 0.5).astype(np.int32)

    def png(self) -> bytes:
        if self.footprints is not None:
            building, outline = self.footprints
        else:
            building = (self.mask == MASK_BUILDING).astype(np.uint8)
            outline = building - cv2.erode(building, np.ones((3, 3), np.uint8))
        view = cv2.copyTo(cv2.LUT(self.rgb, TINT), building, self.rgb.copy())
        for colour, where in ((EDGE, outline), (NODATA, (self.mask == MASK_NODATA).view(np.uint8))):
            view = cv2.copyTo(cv2.merge([np.full(where.shape, value, np.uint8) for value in colour]), where, view)
        return cv2.imencode(".png", cv2.cvtColor(view, cv2.COLOR_RGB2BGR))[1].tobytes()

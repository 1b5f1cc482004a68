"""One block's core mask as building polygons, in mosaic pixel coordinates.

Coordinates are x = column and y = row of the whole mosaic, with vertices on pixel corners (integers), so the
polygons of neighbouring blocks share their seam vertices exactly and union without rounding. A building is a
4-connected component of `mask == 1`: pixels that touch only at a corner are two buildings, inside a block and
across seams alike.

A block's buildings are *complete* when they reach no edge of its core that another block shares, else
*fragments*. For each shared edge the block keeps which fragment covers each pixel along it, so the merger
joins fragments by pixel adjacency across the seam (the exact rule of 4-connectivity), with no geometric test.
"""
from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from shapely.geometry import shape

from segcore.raster.grid import Block

FORMAT = 1  # version of BlockVectors.to_bytes; bump when its layout changes
SIDES = ("top", "bottom", "left", "right")
SeamKey = tuple[str, int, int]  # ("h", row, first column) or ("v", column, first row) of a seam in the mosaic


def geometry_array(values: Sequence[shapely.Geometry]) -> np.ndarray:
    """A 1-D object array of geometries (np.array would try to nest some inputs)."""
    out = np.empty(len(values), object)
    out[:] = values
    return out


@dataclass
class Buildings:
    """Buildings (or fragments of them) as parallel arrays, one entry per building."""

    geometry: np.ndarray  # shapely Polygons, mosaic pixel coordinates
    id: np.ndarray  # int64: row * mosaic width + column of the building's first pixel in raster order
    pixels: np.ndarray  # int64: pixel count
    probability_sum: np.ndarray | None  # int64: sum of its pixels' uint8 probabilities (round(p * 255))
    block: np.ndarray  # int64: index of the block that holds its first pixel

    def __len__(self) -> int:
        return len(self.id)

    @classmethod
    def empty(cls, with_probability: bool) -> Buildings:
        ints = np.zeros(0, np.int64)
        return cls(np.empty(0, object), ints, ints, ints if with_probability else None, ints)

    def take(self, index: np.ndarray) -> Buildings:
        probability = None if self.probability_sum is None else self.probability_sum[index]
        return Buildings(self.geometry[index], self.id[index], self.pixels[index], probability, self.block[index])

    @staticmethod
    def concat(parts: Sequence[Buildings]) -> Buildings:
        with_probability = {part.probability_sum is not None for part in parts}
        if len(with_probability) > 1:
            raise ValueError("cannot join buildings with and without probabilities")
        if not parts:
            return Buildings.empty(False)
        probability = np.concatenate([p.probability_sum for p in parts]) if with_probability == {True} else None
        return Buildings(np.concatenate([p.geometry for p in parts]), np.concatenate([p.id for p in parts]),
                         np.concatenate([p.pixels for p in parts]), probability,
                         np.concatenate([p.block for p in parts]))

    @property
    def confidence(self) -> np.ndarray:
        """Mean probability of each building's pixels in [0, 1]; NaN without a probability raster."""
        if self.probability_sum is None:
            return np.full(len(self), np.nan)
        return self.probability_sum / (255.0 * np.maximum(self.pixels, 1))


def seam_key(block: Block, side: str) -> SeamKey:
    """The seam along one side of a block's core; the block across it names the same seam."""
    return {"top": ("h", block.row, block.col), "bottom": ("h", block.row + block.height, block.col),
            "left": ("v", block.col, block.row), "right": ("v", block.col + block.width, block.row)}[side]


def shared_sides(block: Block, mosaic_width: int, mosaic_height: int) -> list[str]:
    """The sides of a block's core that border another block (not the mosaic's edge)."""
    shared = {"top": block.row > 0, "bottom": block.row + block.height < mosaic_height,
              "left": block.col > 0, "right": block.col + block.width < mosaic_width}
    return [side for side in SIDES if shared[side]]


@dataclass
class BlockVectors:
    """A block's buildings: complete ones, fragments, and which fragment lines each shared edge."""

    block: Block
    mosaic_width: int
    mosaic_height: int
    complete: Buildings
    fragments: Buildings
    # Per shared side: int32 index into `fragments` of each pixel along it (-1: not a building), top and
    # bottom from left to right, left and right from top to bottom.
    edges: dict[str, np.ndarray]

    def to_bytes(self) -> bytes:
        """A compressed .npz of plain arrays (WKB geometries), read back with `from_bytes` (no pickle)."""
        b = self.block
        header = [FORMAT, b.index, b.row, b.col, b.height, b.width, b.halo_top, b.halo_left, b.halo_bottom,
                  b.halo_right, self.mosaic_width, self.mosaic_height, self.complete.probability_sum is not None]
        arrays: dict[str, np.ndarray] = {"header": np.array(header, np.int64)}
        for name, part in (("complete", self.complete), ("fragments", self.fragments)):
            wkb = shapely.to_wkb(part.geometry) if len(part) else np.zeros(0, object)
            arrays[f"{name}_wkb"] = np.frombuffer(b"".join(wkb), np.uint8)
            arrays[f"{name}_offsets"] = np.concatenate([[0], np.cumsum([len(w) for w in wkb], dtype=np.int64)])
            for field in ("id", "pixels", "block", "probability_sum"):
                values = getattr(part, field)
                if values is not None:
                    arrays[f"{name}_{field}"] = values
        for side, edge in self.edges.items():
            arrays[f"edge_{side}"] = edge
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> BlockVectors:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            header = [int(v) for v in stored["header"]]
            if header[0] != FORMAT:
                raise ValueError(f"block vectors of format {header[0]}, expected {FORMAT}: rerun the block")
            with_probability = bool(header[12])
            parts = []
            for name in ("complete", "fragments"):
                blob, offsets = stored[f"{name}_wkb"].tobytes(), stored[f"{name}_offsets"]
                wkb = [blob[start:end] for start, end in itertools.pairwise(offsets.tolist())]
                geometry = shapely.from_wkb(wkb) if wkb else np.empty(0, object)
                parts.append(Buildings(geometry, stored[f"{name}_id"], stored[f"{name}_pixels"],
                                       stored[f"{name}_probability_sum"] if with_probability else None,
                                       stored[f"{name}_block"]))
            edges = {side: stored[f"edge_{side}"] for side in SIDES if f"edge_{side}" in stored.files}
        return cls(Block(*header[1:10]), header[10], header[11], parts[0], parts[1], edges)

    def seams(self) -> dict[str, SeamKey]:
        return {side: seam_key(self.block, side) for side in self.edges}


def _first_pixels(geometry: np.ndarray, mosaic_width: int) -> np.ndarray:
    """Raster-order index (row * width + column) of each polygon's first pixel.

    The first pixel's top-left corner is the polygon's vertex with the smallest y, and the smallest x among
    those; it is a pixel's left corner, so x < width.
    """
    coords, owner = shapely.get_coordinates(geometry, return_index=True)
    x, y = coords[:, 0].astype(np.int64), coords[:, 1].astype(np.int64)
    order_key = y * (mosaic_width + 1) + x
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    first = np.minimum.reduceat(order_key, starts)
    return (first // (mosaic_width + 1)) * mosaic_width + first % (mosaic_width + 1)


def polygonize_block(mask: np.ndarray, probability: np.ndarray | None, block: Block, mosaic_width: int,
                     mosaic_height: int) -> BlockVectors:
    """Buildings of one block's core mask (1 building, 0 background, anything else nodata).

    `probability` (uint8 round(p * 255), the core's shape) or None; `block` places the core in the mosaic.
    """
    if mask.shape != (block.height, block.width):
        raise ValueError(f"mask of shape {mask.shape} for block {block.index} of {block.height}x{block.width}")
    if probability is not None and probability.shape != mask.shape:
        raise ValueError(f"probability of shape {probability.shape} for a mask of shape {mask.shape}")
    building = (mask == 1).astype(np.uint8)
    count, labels = cv2.connectedComponents(building, connectivity=4, ltype=cv2.CV_32S)
    sides = shared_sides(block, mosaic_width, mosaic_height)
    if count == 1:
        nothing = Buildings.empty(probability is not None)
        return BlockVectors(block, mosaic_width, mosaic_height, nothing, nothing,
                            {side: np.full(_edge(labels, side).shape, -1, np.int32) for side in sides})
    geometry = np.empty(count - 1, object)
    origin = Affine.translation(block.col, block.row)
    for polygon, value in shapes(labels, mask=building.astype(bool), connectivity=4, transform=origin):
        geometry[int(value) - 1] = shape(polygon)
    # One canonical vertex order (normalize), so that simplifying a building does not depend on where GDAL or
    # a seam merge started its rings: equal buildings give equal outlines, whatever the block size.
    geometry = shapely.normalize(geometry)
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=count)[1:].astype(np.int64)
    probability_sum = None
    if probability is not None:
        probability_sum = np.bincount(flat, weights=probability.ravel(), minlength=count)[1:].astype(np.int64)
    everything = Buildings(geometry, _first_pixels(geometry, mosaic_width), pixels, probability_sum,
                           np.full(count - 1, block.index, np.int64))
    on_seam = np.zeros(count, bool)
    for side in sides:
        on_seam[_edge(labels, side)] = True
    on_seam[0] = False
    fragment_of_label = np.full(count, -1, np.int32)
    fragment_of_label[on_seam] = np.arange(int(on_seam.sum()), dtype=np.int32)
    edges = {side: fragment_of_label[_edge(labels, side)] for side in sides}
    return BlockVectors(block, mosaic_width, mosaic_height, everything.take(~on_seam[1:]),
                        everything.take(on_seam[1:]), edges)


def _edge(labels: np.ndarray, side: str) -> np.ndarray:
    return {"top": labels[0], "bottom": labels[-1], "left": labels[:, 0], "right": labels[:, -1]}[side]

"""Small planar-geometry helpers for the synthetic city (pixel coordinates, 3x3 affine matrices)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segcore.synth.palette import Colour

SUBPIXEL = 16   # building vertices live on a 1/16 px grid: exact in binary floating point
BLOB_HARMONICS = (2, 3, 4, 5)
BLOB_ROUGHNESS = 0.22
BLOB_VERTICES = 28


@dataclass(frozen=True)
class Shapes:
    """Filled polygons of one kind, each with its RGB colour, drawn in list order."""
    polygons: list[np.ndarray]   # (n_i, 2) pixel x, y
    colours: np.ndarray          # (n, 3)
    rows: np.ndarray             # (n, 2) lowest and highest y of each polygon, for strip culling

    @classmethod
    def build(cls, items: list[tuple[np.ndarray, Colour]]) -> Shapes:
        polygons = [polygon for polygon, _ in items]
        rows = [(polygon[:, 1].min(), polygon[:, 1].max()) for polygon in polygons]
        return cls(polygons, np.asarray([c for _, c in items], dtype=np.float64).reshape(-1, 3),
                   np.asarray(rows, dtype=np.float64).reshape(-1, 2))

    def touching(self, top: float, bottom: float) -> np.ndarray:
        """Indices of the polygons that reach into rows [top, bottom)."""
        return np.flatnonzero((self.rows[:, 1] >= top) & (self.rows[:, 0] <= bottom))


def translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def rotate(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine matrix to points of shape (..., 2)."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Corners of an axis-aligned rectangle, as an open ring."""
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def snap(points: np.ndarray) -> np.ndarray:
    return np.round(points * SUBPIXEL) / SUBPIXEL


def blob(rng: np.random.Generator, centre: np.ndarray, radius: float) -> np.ndarray:
    """An irregular roundish polygon (pond, soil patch): a circle with random low harmonics."""
    angles = np.linspace(0.0, 2 * math.pi, BLOB_VERTICES, endpoint=False)
    scale = np.ones_like(angles)
    for k in BLOB_HARMONICS:
        scale += BLOB_ROUGHNESS / k * np.cos(k * angles + rng.uniform(0.0, 2 * math.pi))
    return centre + radius * scale[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def distance_to_segments(point: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Distance from `point` to each segment starts[i] -> ends[i]."""
    span = ends - starts
    t = np.clip(np.einsum("ij,ij->i", point - starts, span) / np.einsum("ij,ij->i", span, span), 0.0, 1.0)
    return np.linalg.norm(point - (starts + t[:, None] * span), axis=1)

"""Drawing a planned city, one horizontal strip at a time, into RGB pixels and building labels.

Each strip is drawn on a canvas MARGIN rows (more for a wider blur) taller on both sides, so that the blur and the
edge filters see the same neighbourhood as they would in one big image; objects are looked
up by the rows they touch, so a strip costs time and memory in proportion to its own size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from rasterio.features import rasterize
from rasterio.transform import Affine

from segcore.synth.geometry import SUBPIXEL, Shapes
from segcore.synth.layout import (
    SHADOW_RATIO,
    TREE_HEIGHT_PER_RADIUS,
    Building,
    CityPlan,
    Field,
)
from segcore.synth.palette import DRY_GRASS, GRASS, MARKING, SHADOW_TINT

# Strips are rendered and written STRIP_ROWS rows at a time and the sensor noise of strip k is
# drawn from a generator seeded with (seed, k): changing this constant changes the output.
STRIP_ROWS = 512
MARGIN = 8                       # > blur radius (3 px at sigma 0.7) + eave filter (1 px)
CV_SHIFT = int(np.log2(SUBPIXEL))   # OpenCV fixed-point bits matching the vertex grid
BUILDING, BACKGROUND = 255, 0    # label values

BLUR_SIGMA = 0.7                 # optics and resampling softness, px
NOISE_SIGMA = 3.0                # sensor noise, grey levels
DRY_MIX = (0.35, 0.5)            # dry-grass share = offset + gain * moisture field
# Brightness modulation: 1 + field gain * brightness field + tile gains . (grain, mottle) tiles.
GROUND_FIELD_GAIN = 0.08
GROUND_TILE_GAINS = (0.06, 0.06)
ROOF_TILE_GAINS = (0.035, 0.0)
TREE_TILE_GAINS = (0.12, 0.2)
FACET_CONTRAST = 0.16            # brightness change of a roof plane facing straight at the sun
RIDGE_FACTOR = 1.15
PARAPET_FACTOR = 1.12
FIXTURE_FACTOR = 1.22
FIXTURE_SHADOW_FACTOR = 0.65
FIXTURE_HEIGHT = 3.0             # px
EAVE_FACTOR = 0.85               # roof edges are a little darker (gutters, overhang shade)
TREE_HIGHLIGHT = (1.28, 0.6, 0.35)   # sunlit crown: brightness, radius and offset (x radius)
AIRLIGHT = (205.0, 210.0, 216.0)     # the bright, slightly blue veil of haze


@dataclass(frozen=True)
class Look:
    """The per-pixel effects of the camera and the air (`segcore.synth.realism` sets them from the config)."""

    blur_sigma: float = BLUR_SIGMA
    noise_sigma: float = NOISE_SIGMA     # luminance noise, equal on the three channels
    colour_noise: float = 0.0            # per-channel noise on top, grey levels
    haze: float = 0.0                    # largest airlight share
    haze_field: Field | None = None      # where the haze is thick (1) or thin (-1)


def render_strip(plan: CityPlan, row0: int, row1: int, transform: Affine,
                 look: Look | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image rows [row0, row1): an (rows, width, 3) uint8 RGB array and (rows, width) uint8 labels.

    `row0` must start a strip (a multiple of STRIP_ROWS) and the range may not exceed one strip.
    `transform` is the whole image's geotransform: labels are burned from the footprints in
    map coordinates, exactly as a reader of buildings.geojson would rasterize them.
    """
    if row0 % STRIP_ROWS or not 0 < row1 - row0 <= STRIP_ROWS or row1 > plan.height:
        raise ValueError(f"rows [{row0}, {row1}) are not one strip of a {plan.height}-row image")
    look = look or Look()
    margin = max(MARGIN, math.ceil(4 * look.blur_sigma) + 1)  # the blur's reach (its kernel radius is 4 sigma)
    top, bottom = max(0, row0 - margin), min(plan.height, row1 + margin)
    buildings = [plan.buildings[i] for i in np.flatnonzero(
        (plan.building_rows[:, 1] >= top) & (plan.building_rows[:, 0] <= bottom))]
    tree_reach = plan.trees[:, 2] * (1 + TREE_HEIGHT_PER_RADIUS * max(SHADOW_RATIO))
    trees = plan.trees[(plan.trees[:, 1] + tree_reach >= top) & (plan.trees[:, 1] - tree_reach <= bottom)]

    canvas = _ground(plan, top, bottom)
    _cast_shadows(canvas, plan, buildings, trees, top)
    ids = _burn_footprints(buildings, transform, top, canvas.shape[:2])
    _paint_roofs(canvas, ids, buildings, plan, top, bottom)
    _paint_trees(canvas, trees, plan, top, bottom)

    canvas = cv2.GaussianBlur(canvas, (0, 0), look.blur_sigma)[row0 - top:row1 - top]
    if look.haze_field is not None:
        amount = look.haze * (0.5 + 0.5 * _field_rows(look.haze_field, row0, row1, plan.width))
        canvas = canvas * (1 - amount)[..., None] + amount[..., None] * np.array(AIRLIGHT, np.float32)
    # Luminance noise, equal on the three channels as after a camera's colour processing.
    grain = np.random.default_rng([plan.seed, row0 // STRIP_ROWS]).standard_normal(
        canvas.shape[:2], dtype=np.float32)
    grain *= np.float32(look.noise_sigma)
    noise = np.repeat(grain[..., None], 3, axis=2)
    if look.colour_noise > 0:
        noise += np.float32(look.colour_noise) * np.random.default_rng(
            [plan.seed, row0 // STRIP_ROWS, 1]).standard_normal(noise.shape, dtype=np.float32)
    image = cv2.add(canvas, noise, dtype=cv2.CV_8U)   # rounds and saturates
    labels = np.where(ids[row0 - top:row1 - top] > 0, BUILDING, BACKGROUND).astype(np.uint8)
    return image, labels


def map_ring(footprint: np.ndarray, transform: Affine) -> list[list[float]]:
    """A footprint as a closed ring of map coordinates (what buildings.geojson stores)."""
    ring = np.vstack([footprint, footprint[:1]])
    x = transform.a * ring[:, 0] + transform.b * ring[:, 1] + transform.c
    y = transform.d * ring[:, 0] + transform.e * ring[:, 1] + transform.f
    return np.stack([x, y], axis=1).tolist()


def _cv(points: np.ndarray, top: int) -> np.ndarray:
    """Pixel coordinates -> OpenCV fixed point on the canvas (OpenCV puts pixel centres on integers)."""
    return np.round((points - (0.5, top + 0.5)) * SUBPIXEL).astype(np.int32)


def _scale(canvas: np.ndarray, factor: np.ndarray) -> None:
    """Multiply every channel of `canvas` by a per-pixel factor, in place."""
    cv2.multiply(canvas, cv2.merge([factor] * 3), dst=canvas)


def _texture(plan: CityPlan, gains: tuple[float, float], top: int, bottom: int) -> np.ndarray:
    """Rows [top, bottom) of the plane tiled with a weighted sum of the plan's noise tiles."""
    (gain_a, gain_b), (noise_a, noise_b) = gains, plan.tiles
    tile = gain_a * noise_a + gain_b * noise_b
    rows = tile[np.arange(top, bottom) % tile.shape[0]]
    return np.tile(rows, (1, -(-plan.width // tile.shape[1])))[:, :plan.width]


def _field_rows(field: Field, top: int, bottom: int, width: int) -> np.ndarray:
    """Rows [top, bottom) of a lattice field, smoothstep-interpolated so cell edges do not show."""
    def weights(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        position = (np.arange(start, stop) + 0.5) / field.cell
        index = np.floor(position).astype(np.intp)
        t = (position - index).astype(np.float32)
        return index, t * t * (3 - 2 * t)

    ry, wy = weights(top, bottom)
    rows = field.values[ry] * (1 - wy)[:, None] + field.values[ry + 1] * wy[:, None]
    cx, wx = weights(0, width)
    return rows.take(cx, axis=1) * (1 - wx) + rows.take(cx + 1, axis=1) * wx


def _ground(plan: CityPlan, top: int, bottom: int) -> np.ndarray:
    """Grass of varying dryness, then every flat surface (lots, water, roads, cars), textured."""
    moisture, brightness = (_field_rows(f, top, bottom, plan.width) for f in plan.fields)
    dry = np.clip(DRY_MIX[0] + DRY_MIX[1] * moisture, 0.0, 1.0)
    grass = np.array(GRASS, np.float32)
    # Per channel: grass + (dry grass - grass) * dry, as one 3x2 colour transform.
    canvas = cv2.transform(dry[..., None], np.stack([np.array(DRY_GRASS, np.float32) - grass, grass], axis=1))
    for shapes in (plan.ground, plan.water, plan.roads):
        _fill(canvas, shapes, top, bottom)
    _draw_markings(canvas, plan.markings, top, bottom)
    _fill(canvas, plan.vehicles, top, bottom)
    _scale(canvas, 1 + GROUND_FIELD_GAIN * brightness + _texture(plan, GROUND_TILE_GAINS, top, bottom))
    return canvas


def _fill(canvas: np.ndarray, shapes: Shapes, top: int, bottom: int) -> None:
    for i in shapes.touching(top, bottom):
        cv2.fillPoly(canvas, [_cv(shapes.polygons[i], top)], shapes.colours[i].tolist(), shift=CV_SHIFT)


def _draw_markings(canvas: np.ndarray, markings: np.ndarray, top: int, bottom: int) -> None:
    ys = markings[:, :, 1]
    visible = markings[(ys.max(axis=1) >= top - 1) & (ys.min(axis=1) <= bottom + 1)]
    if len(visible):
        cv2.polylines(canvas, list(_cv(visible, top)), False, MARKING, 1, shift=CV_SHIFT)


def _cast_shadows(canvas: np.ndarray, plan: CityPlan, buildings: list[Building], trees: np.ndarray,
                  top: int) -> None:
    """Darken the ground where buildings and trees block the sun (roofs and crowns come later)."""
    mask = np.zeros(canvas.shape[:2], np.uint8)
    away = -plan.sun * plan.shadow_ratio       # ground offset per px of object height
    for building in buildings:
        offset = away * building.height
        for section in building.sections:
            # A box's shadow is the hull of its footprint and the footprint moved by the offset.
            hull = cv2.convexHull(_cv(np.vstack([section, section + offset]), top))
            cv2.fillConvexPoly(mask, hull, 1, shift=CV_SHIFT)
    radii = trees[:, 2:3]
    centres = _cv(trees[:, :2] + away * TREE_HEIGHT_PER_RADIUS * radii, top).tolist()
    for centre, radius in zip(centres, np.round(radii[:, 0] * SUBPIXEL).astype(int).tolist(), strict=True):
        cv2.circle(mask, centre, radius, 1, -1, shift=CV_SHIFT)
    tint = np.array([(1.0, 1.0, 1.0), SHADOW_TINT], np.float32)
    np.multiply(canvas, np.take(tint, mask, axis=0), out=canvas)


def _burn_footprints(buildings: list[Building], transform: Affine, top: int,
                     shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel index (1-based, into `buildings`) of the building covering it, 0 elsewhere."""
    if not buildings:
        return np.zeros(shape, np.int32)
    footprints = [({"type": "Polygon", "coordinates": [map_ring(b.footprint, transform)]}, k)
                  for k, b in enumerate(buildings, start=1)]
    return rasterize(footprints, out_shape=shape, transform=transform * Affine.translation(0, top),
                     fill=0, all_touched=False, dtype="int32")


def _paint_roofs(canvas: np.ndarray, ids: np.ndarray, buildings: list[Building], plan: CityPlan,
                 top: int, bottom: int) -> None:
    """Roof colour on exactly the burned pixels, shaded per roof plane, darker along the eaves."""
    roof = (ids > 0).astype(np.uint8)
    if not roof.any():
        return
    light = np.ones(ids.shape, np.float32)
    for building in buildings:
        _shade_roof(light, building, plan.sun, top)
    light *= 1 + _texture(plan, ROOF_TILE_GAINS, top, bottom)
    eaves = roof - cv2.erode(roof, np.ones((3, 3), np.uint8))   # the outermost roof pixels
    light *= 1 - np.float32(1 - EAVE_FACTOR) * eaves
    colours = np.vstack([np.zeros((1, 3)), [b.colour for b in buildings]]).astype(np.float32)
    roofs = np.take(colours, ids, axis=0)
    _scale(roofs, light)
    cv2.copyTo(roofs, roof, canvas)


def _shade_roof(shade: np.ndarray, building: Building, sun: np.ndarray, top: int) -> None:
    """Brightness factors of one roof: sloped planes lit by the sun, or a flat roof's details."""
    if building.roof == "flat":
        cv2.polylines(shade, [_cv(building.footprint, top)], True, PARAPET_FACTOR, 2, shift=CV_SHIFT)
        offset = -sun * FIXTURE_HEIGHT
        for box in building.fixtures:
            cv2.fillConvexPoly(shade, _cv(box + offset, top), FIXTURE_SHADOW_FACTOR, shift=CV_SHIFT)
        for box in building.fixtures:
            cv2.fillConvexPoly(shade, _cv(box, top), FIXTURE_FACTOR, shift=CV_SHIFT)
        return
    for section in building.sections:
        c0, c1, c2, c3 = section
        along, across = c1 - c0, c3 - c0
        length, breadth = float(np.linalg.norm(along)), float(np.linalg.norm(across))
        along, across = along / length, across / breadth
        # A gable ridge runs the full length; a hip ridge stops half a breadth from each end.
        half_ridge = length / 2 if building.roof == "gable" else max(length - breadth, 0.0) / 2
        centre = (c0 + c2) / 2
        r0, r1 = centre - along * half_ridge, centre + along * half_ridge
        planes = [(np.array([c0, c1, r1, r0]), -across), (np.array([c3, c2, r1, r0]), across)]
        if building.roof == "hip":
            planes += [(np.array([c1, c2, r1]), along), (np.array([c0, c3, r0]), -along)]
        for plane, facing in planes:
            cv2.fillConvexPoly(shade, _cv(plane, top), 1 + FACET_CONTRAST * float(facing @ sun),
                               shift=CV_SHIFT)
        ends = _cv(np.array([r0, r1]), top)
        cv2.line(shade, tuple(ends[0].tolist()), tuple(ends[1].tolist()), RIDGE_FACTOR, 1,
                 shift=CV_SHIFT)


def _paint_trees(canvas: np.ndarray, trees: np.ndarray, plan: CityPlan, top: int, bottom: int) -> None:
    """Round crowns with a sunlit side and a leafy texture."""
    if not len(trees):
        return
    crowns = np.zeros(canvas.shape[:2], np.uint8)
    brightness, radius_share, offset_share = TREE_HIGHLIGHT
    radii = trees[:, 2:3]
    centres = _cv(trees[:, :2], top).tolist()
    lit = _cv(trees[:, :2] + plan.sun * offset_share * radii, top).tolist()
    sizes = np.round(np.hstack([radii, radii * radius_share]) * SUBPIXEL).astype(int).tolist()
    colours = trees[:, 3:].tolist()
    for centre, sunny, (radius, sunny_radius), rgb in zip(centres, lit, sizes, colours, strict=True):
        cv2.circle(canvas, centre, radius, rgb, -1, shift=CV_SHIFT)
        cv2.circle(canvas, sunny, sunny_radius, [c * brightness for c in rgb], -1, shift=CV_SHIFT)
        cv2.circle(crowns, centre, radius, 1, -1, shift=CV_SHIFT)
    _scale(canvas, 1 + crowns * _texture(plan, TREE_TILE_GAINS, top, bottom))

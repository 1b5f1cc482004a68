"""City layout for the synthetic aerial scene: sun, river, street grid, and the blocks between.

The layout is a pure function of ``(width, height, seed)`` and lives in pixel coordinates:
x grows to the right, y grows down and (0, 0) is the top-left corner of the top-left pixel
(the GDAL convention: pixel (row, col) covers [col, col + 1) x [row, row + 1)). Building
vertices are snapped to 1/16 px, so converting them to map coordinates with a power-of-two
pixel size (0.5 m) is exact in floating point: rasterizing the written GeoJSON then
reproduces the label raster bit for bit, whichever strip a pixel was rendered in.

All sizes are pixels at the nominal 0.5 m/px ground sampling distance.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from segcore.synth.blocks import CAR_LENGTH, CAR_WIDTH, Building, Scenery, fill_block
from segcore.synth.geometry import Shapes, apply, rect, rotate, translate
from segcore.synth.palette import (
    ASPHALT,
    CAR_COLOURS,
    RIVER_BANK_GREEN,
    SIDEWALK,
    WATER,
    jitter,
)

# Street grid.
ROAD_SPACING = (170.0, 360.0)      # centre-line distance of parallel roads
ROAD_WIDTH = (12.0, 20.0)
MAIN_ROAD_WIDTH = (22.0, 30.0)
MAIN_ROAD_PROB = 0.2
SIDEWALK_WIDTH = (2.0, 4.0)
SIDEWALK_PROB = 0.6
LANE_DASH, LANE_GAP = 10.0, 14.0
CAR_SPACING = 90.0                 # mean road length per car
GRID_PAD = 64.0                    # the grid overshoots the image so roads run off every edge

# Water.
RIVER_PROB = 0.75
RIVER_HALF_WIDTH = (20.0, 50.0)
RIVER_WIDTH_WOBBLE = (0.2, 700.0)  # relative amplitude and length scale of width changes
RIVER_MEANDERS = 2                 # superposed sine meanders
RIVER_MEANDER = ((40.0, 180.0), (1300.0, 2600.0))   # amplitude and wavelength ranges
RIVER_OFFSET = 0.3                 # max distance of the river from the centre, share of the image
RIVER_STEP = 16.0                  # centre-line vertex spacing
RIVER_BANK = 6.0                   # vegetated strip painted along both shores
RIVER_CLEARANCE = 6.0              # nothing is built closer than this to the bank

# Sun: the shadow length per unit of object height is the tangent of the sun's zenith angle.
SHADOW_RATIO = (0.45, 0.9)
TREE_HEIGHT_PER_RADIUS = 1.3       # crown centre height: shadows stay attached to the crown

# Texture: smooth random fields on a coarse lattice plus small periodic noise tiles.
FIELD_CELLS = (160, 56)            # ground moisture, brightness mottling
TILE_SIZE = 256
TILE_SIGMAS = (0.8, 2.5)           # fine grain, coarser mottle


@dataclass(frozen=True)
class Field:
    """A smooth random field: lattice values in [-1, 1] one every `cell` px, interpolated."""
    cell: int
    values: np.ndarray         # (rows, cols) float32


@dataclass(frozen=True)
class CityPlan:
    """Everything in the scene, globally; the renderer draws any horizontal strip of it."""
    width: int
    height: int
    seed: int
    sun: np.ndarray            # unit (x, y) vector pointing towards the sun
    shadow_ratio: float
    ground: Shapes             # lot paving, lawns, soil, parking lots, driveways (painted in order)
    water: Shapes              # river banks, then river and ponds
    roads: Shapes              # sidewalks, then asphalt
    markings: np.ndarray       # (m, 2, 2) lane and parking lines
    vehicles: Shapes
    buildings: list[Building]
    building_rows: np.ndarray  # (n, 2) rows each building and its longest possible shadow span
    trees: np.ndarray          # (t, 6) x, y, radius, R, G, B
    fields: tuple[Field, ...]
    tiles: tuple[np.ndarray, ...]  # periodic zero-mean unit-variance noise tiles


@dataclass(frozen=True)
class _Road:
    position: float            # grid coordinate of the centre line
    half_width: float
    sidewalk: float
    main: bool

    @property
    def edge(self) -> float:
        """Distance from the centre line to where the roadside lots begin."""
        return self.half_width + self.sidewalk


def plan_city(width: int, height: int, seed: int) -> CityPlan:
    """Lay out a whole city for a `width` x `height` px image; deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    sun_azimuth = rng.uniform(0.0, 2 * math.pi)
    scenery = Scenery(width, height, rng)
    extent = math.hypot(width, height) / 2 + GRID_PAD     # half-size of a square covering the image
    _add_river(scenery, extent)
    _add_streets(scenery, extent)
    reach = max(SHADOW_RATIO) * max((b.height for b in scenery.buildings), default=0.0)
    building_rows = [(b.footprint[:, 1].min() - reach, b.footprint[:, 1].max() + reach)
                     for b in scenery.buildings]
    return CityPlan(
        width=width, height=height, seed=seed,
        sun=np.array([math.cos(sun_azimuth), math.sin(sun_azimuth)]),
        shadow_ratio=float(rng.uniform(*SHADOW_RATIO)),
        ground=Shapes.build(scenery.ground),
        water=Shapes.build(scenery.banks + scenery.water),
        roads=Shapes.build(scenery.sidewalks + scenery.asphalt),
        markings=np.asarray(scenery.markings, dtype=np.float64).reshape(-1, 2, 2),
        vehicles=Shapes.build(scenery.vehicles),
        buildings=scenery.buildings,
        building_rows=np.asarray(building_rows, dtype=np.float64).reshape(-1, 2),
        trees=np.asarray(scenery.trees, dtype=np.float64).reshape(-1, 6),
        fields=tuple(_random_field(rng, width, height, cell) for cell in FIELD_CELLS),
        tiles=tuple(_noise_tile(rng, sigma) for sigma in TILE_SIGMAS),
    )


def _add_river(scenery: Scenery, extent: float) -> None:
    """A meandering river crossing the whole image (most seeds have one)."""
    rng = scenery.rng
    if rng.random() >= RIVER_PROB:
        return
    heading = rng.uniform(0.0, math.pi)
    along = np.array([math.cos(heading), math.sin(heading)])
    across = np.array([-along[1], along[0]])
    size = np.array([scenery.width, scenery.height], dtype=np.float64)
    centre = size / 2 + across * rng.uniform(-RIVER_OFFSET, RIVER_OFFSET) * size.min()
    t = np.arange(-extent, extent + RIVER_STEP, RIVER_STEP)
    offset = np.zeros_like(t)
    for _ in range(RIVER_MEANDERS):
        amplitude, wavelength = rng.uniform(*RIVER_MEANDER[0]), rng.uniform(*RIVER_MEANDER[1])
        offset += amplitude * np.sin(2 * math.pi * t / wavelength + rng.uniform(0, 2 * math.pi))
    line = centre + t[:, None] * along + offset[:, None] * across
    tangent = np.gradient(line, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    wobble, scale = RIVER_WIDTH_WOBBLE
    half = rng.uniform(*RIVER_HALF_WIDTH) * (1 + wobble * np.sin(t / scale + rng.uniform(0, 2 * math.pi)))
    for width, target, colour in ((half + RIVER_BANK, scenery.banks, RIVER_BANK_GREEN),
                                  (half, scenery.water, WATER)):
        shores = normal * width[:, None]
        target.append((np.vstack([line + shores, (line - shores)[::-1]]), jitter(rng, colour)))
    scenery.river = (line[:-1], line[1:])
    scenery.river_reach = float(half.max()) + RIVER_BANK + RIVER_CLEARANCE


def _road_lines(rng: np.random.Generator, extent: float) -> list[_Road]:
    roads = []
    position = -extent - rng.uniform(0.0, ROAD_SPACING[1])
    while position < extent + ROAD_SPACING[1]:
        main = rng.random() < MAIN_ROAD_PROB
        width = rng.uniform(*(MAIN_ROAD_WIDTH if main else ROAD_WIDTH))
        sidewalk = rng.uniform(*SIDEWALK_WIDTH) if rng.random() < SIDEWALK_PROB else 0.0
        roads.append(_Road(position, width / 2, sidewalk, main))
        position += rng.uniform(*ROAD_SPACING)
    return roads


def _add_streets(scenery: Scenery, extent: float) -> None:
    """Two perpendicular families of straight roads on a rotated grid, then the blocks between."""
    rng = scenery.rng
    angle = rng.uniform(0.0, math.pi / 2)     # the grid looks the same turned by 90 degrees
    grid = translate(scenery.width / 2, scenery.height / 2) @ rotate(angle)   # (u, v) -> pixels
    # Swapping u and v turns a road at fixed u into one at fixed v.
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    at_u, at_v = _road_lines(rng, extent), _road_lines(rng, extent)
    for roads, crossing, frame in ((at_u, at_v, grid), (at_v, at_u, grid @ swap)):
        for road in roads:
            _add_road(scenery, frame, road, crossing, extent)
    for u0, u1 in itertools.pairwise(at_u):
        for v0, v1 in itertools.pairwise(at_v):
            lot = (u0.position + u0.edge, u1.position - u1.edge,
                   v0.position + v0.edge, v1.position - v1.edge)
            if lot[1] > lot[0] and lot[3] > lot[2] and _visible(scenery, apply(grid, rect(*lot))):
                fill_block(scenery, grid, lot)


def _visible(scenery: Scenery, points: np.ndarray) -> bool:
    """Whether the bounding box of `points` (..., 2) overlaps the image."""
    flat = points.reshape(-1, 2)
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    return hi[0] >= 0 and lo[0] <= scenery.width and hi[1] >= 0 and lo[1] <= scenery.height


def _add_road(scenery: Scenery, frame: np.ndarray, road: _Road, crossing: list[_Road],
              extent: float) -> None:
    """A road along the frame's second axis at `road.position`, with sidewalks, cars and lane dashes."""
    rng = scenery.rng
    asphalt = apply(frame, rect(road.position - road.half_width, road.position + road.half_width,
                                -extent, extent))
    if not _visible(scenery, asphalt):
        return
    if road.sidewalk:
        walk = apply(frame, rect(road.position - road.edge, road.position + road.edge, -extent, extent))
        scenery.sidewalks.append((walk, jitter(rng, SIDEWALK)))
    scenery.asphalt.append((asphalt, jitter(rng, ASPHALT)))
    # Cars in both lanes, none standing in a junction.
    along = _off_junctions(rng.uniform(-extent, extent, rng.poisson(2 * extent / CAR_SPACING)),
                           CAR_LENGTH, crossing)
    lanes = road.position + rng.choice((-0.5, 0.5), len(along)) * road.half_width
    for u, v in zip(lanes, along, strict=True):
        car = apply(frame, rect(u - CAR_WIDTH / 2, u + CAR_WIDTH / 2, v, v + CAR_LENGTH))
        if _visible(scenery, car):
            scenery.vehicles.append((car, jitter(rng, CAR_COLOURS[rng.integers(len(CAR_COLOURS))])))
    if road.main:
        # Dashed centre line, interrupted at junctions.
        starts = _off_junctions(np.arange(-extent, extent, LANE_DASH + LANE_GAP), LANE_DASH, crossing)
        heads = np.stack([np.full_like(starts, road.position), starts], axis=1)
        dashes = apply(frame, np.stack([heads, heads + np.array([0.0, LANE_DASH])], axis=1))
        scenery.markings.extend(d for d in dashes if _visible(scenery, d))


def _off_junctions(starts: np.ndarray, length: float, crossing: list[_Road]) -> np.ndarray:
    """The stretches [start, start + length) along a road that stay clear of all crossing roads."""
    for cross in crossing:
        starts = starts[(starts + length < cross.position - cross.edge)
                        | (starts > cross.position + cross.edge)]
    return starts


def _random_field(rng: np.random.Generator, width: int, height: int, cell: int) -> Field:
    shape = (height // cell + 2, width // cell + 2)
    return Field(cell, rng.uniform(-1.0, 1.0, size=shape).astype(np.float32))


def _noise_tile(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise that tiles seamlessly (smoothed in the Fourier domain)."""
    noise = rng.standard_normal((TILE_SIZE, TILE_SIZE))
    freq = np.fft.fftfreq(TILE_SIZE)
    gain = np.exp(-2 * (math.pi * sigma) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    tile = np.fft.ifft2(np.fft.fft2(noise) * gain).real
    return ((tile - tile.mean()) / tile.std()).astype(np.float32)

"""What fills a city block: parcels with buildings, driveways and gardens, parking lots, parks
and construction sites.

Coordinates are pixels (see layout.py). A block arrives as an axis-aligned rectangle of the
rotated street grid, the `lot` (u0, u1, v0, v1) between the road edges, plus the matrix
`grid` that maps grid (u, v) to pixels; parcels get their own frames on top of that, so
every object is placed axis-aligned in some frame and only mapped to pixels at the end.
All sizes are pixels at 0.5 m/px.
"""
from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

import numpy as np

from segcore.synth.geometry import (
    apply,
    blob,
    distance_to_segments,
    rect,
    rotate,
    snap,
    translate,
)
from segcore.synth.palette import (
    ASPHALT,
    CAR_COLOURS,
    CONCRETE,
    PARK_GRASS,
    ROOF_COLOURS,
    SOIL_COLOURS,
    TREE_COLOURS,
    WATER,
    Colour,
    jitter,
)

# Buildings (16..120 px = 8..60 m).
BUILDING_MIN_SIDE = 16.0
BUILDING_MAX_SHORT = 80.0
BUILDING_MAX_LONG = 120.0
OUTBUILDING_MAX = 26.0             # garages and sheds behind houses
MIN_WING = 10.0                    # narrowest arm of an L or U footprint
SIDE_GAP = (2.0, 5.0)              # to the parcel side: neighbours stay >= 4 px apart
FRONT_SETBACK = (3.0, 12.0)        # to the road edge
BACK_GAP = 3.0
OUTBUILDING_GAP = 6.0              # between a house and a shed behind it
FRONT_BIAS = 0.3                   # houses sit in the front part of their parcel
ALIGN_JITTER_DEG = 2.0
FIXTURES_MAX = 4                   # rooftop units on a flat roof
FIXTURE_SIZE = (3.0, 7.0)
FIXTURE_MARGIN = 3.0
DRIVEWAY_WIDTH = (5.0, 7.0)

# Parking lots.
STALL_WIDTH, STALL_DEPTH, AISLE = 5.0, 10.0, 12.0
CAR_WIDTH, CAR_LENGTH = 3.6, 8.4
CAR_OCCUPANCY = 0.55

# Trees and parks.
TREE_RADIUS = (3.5, 9.0)
TREE_CLUSTER_SIGMA = 14.0
TREES_PER_CLUSTER = 10
PARK_AREA_PER_CLUSTER = 5000.0     # px^2 of park per clump of trees
BACKYARD_AREA_PER_TREE = 2500.0
POND_PROB, POND_RADIUS = 0.4, (0.15, 0.3)   # radius as a fraction of the park's short side
POND_CLEARANCE = 1.4               # trees keep this many pond radii from the pond's centre
SOIL_PATCH_PROB = 0.3
SITE_RADIUS = 0.42                 # construction site soil, as a fraction of the block size


@dataclass(frozen=True)
class BlockStyle:
    """How a kind of built-up block is subdivided and built on."""
    parcel_width: tuple[float, float]
    row_depth: tuple[float, float]             # depth of a parcel row (capped at half the block)
    fill: tuple[float, float]                  # share of the free parcel a building takes
    shapes: dict[str, float]                   # footprint kind -> weight
    roofs: dict[str, float]                    # roof kind -> weight
    colours: dict[str, float]                  # ROOF_COLOURS name -> weight
    height: tuple[float, float]                # px, drives shadow length
    free_angle_prob: float                     # share of buildings not facing the street
    trees_per_parcel: float
    parking_prob: float
    driveway_prob: float
    outbuilding_prob: float
    lot_colour: Colour | None                  # paving under the whole block; None = lawn


RESIDENTIAL = BlockStyle(
    parcel_width=(28.0, 60.0), row_depth=(60.0, 110.0), fill=(0.55, 0.95),
    shapes={"rect": 0.6, "L": 0.3, "U": 0.1}, roofs={"gable": 0.5, "hip": 0.4, "flat": 0.1},
    colours={"terracotta": 0.3, "red_brown": 0.15, "brown": 0.15, "dark_grey": 0.2, "grey": 0.12,
             "blue_grey": 0.05, "light_grey": 0.03},
    height=(10.0, 20.0), free_angle_prob=0.2, trees_per_parcel=2.5, parking_prob=0.0,
    driveway_prob=0.5, outbuilding_prob=0.35, lot_colour=None)
COMMERCIAL = BlockStyle(
    parcel_width=(45.0, 110.0), row_depth=(50.0, 100.0), fill=(0.75, 1.0),
    shapes={"rect": 0.55, "L": 0.25, "U": 0.2}, roofs={"gable": 0.05, "hip": 0.15, "flat": 0.8},
    colours={"grey": 0.3, "light_grey": 0.25, "white": 0.12, "dark_grey": 0.15, "brown": 0.1,
             "blue_grey": 0.08},
    height=(20.0, 60.0), free_angle_prob=0.15, trees_per_parcel=0.4, parking_prob=0.15,
    driveway_prob=0.0, outbuilding_prob=0.0, lot_colour=CONCRETE)
INDUSTRIAL = BlockStyle(
    parcel_width=(70.0, 160.0), row_depth=(70.0, 140.0), fill=(0.7, 1.0),
    shapes={"rect": 0.8, "L": 0.15, "U": 0.05}, roofs={"flat": 1.0},
    colours={"white": 0.3, "light_grey": 0.3, "grey": 0.22, "blue_grey": 0.18},
    height=(14.0, 30.0), free_angle_prob=0.1, trees_per_parcel=0.2, parking_prob=0.35,
    driveway_prob=0.0, outbuilding_prob=0.0, lot_colour=ASPHALT)
BLOCK_KINDS = {"residential": 0.5, "commercial": 0.15, "industrial": 0.12, "park": 0.15,
               "construction": 0.08}
STYLES = {"residential": RESIDENTIAL, "commercial": COMMERCIAL, "industrial": INDUSTRIAL}

Lot = tuple[float, float, float, float]   # u0, u1, v0, v1 in grid coordinates
Box = tuple[float, float, float, float]   # p0, p1, q0, q1 in a parcel frame


@dataclass(frozen=True)
class Building:
    """One building: its footprint and what the renderer needs to draw its roof and shadow."""
    footprint: np.ndarray      # (n, 2) pixel x, y; open ring snapped to the 1/16 px grid
    sections: np.ndarray       # (k, 4, 2) rectangles covering the footprint; corner 0->1 is a long side
    roof: str                  # "gable", "hip" or "flat"
    colour: Colour
    height: float              # px
    fixtures: np.ndarray       # (m, 4, 2) rooftop units (flat roofs only)


class Scenery:
    """The objects of a city under construction, per kind in drawing order."""

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        self.width, self.height, self.rng = width, height, rng
        self.ground: list[tuple[np.ndarray, Colour]] = []    # (polygon, colour)
        self.banks: list[tuple[np.ndarray, Colour]] = []
        self.water: list[tuple[np.ndarray, Colour]] = []
        self.sidewalks: list[tuple[np.ndarray, Colour]] = []
        self.asphalt: list[tuple[np.ndarray, Colour]] = []
        self.vehicles: list[tuple[np.ndarray, Colour]] = []
        self.markings: list[np.ndarray] = []                      # (2, 2) segments
        self.buildings: list[Building] = []
        self.trees: list[tuple[float, ...]] = []                  # x, y, radius, R, G, B
        self.river: tuple[np.ndarray, np.ndarray] | None = None   # segment starts and ends
        self.river_reach = 0.0     # from the centre line to where building is allowed
        self._nearby_river: tuple[np.ndarray, np.ndarray] | None = None

    def focus(self, centre: np.ndarray, radius: float) -> None:
        """Limit the river checks of `dry` to the segments that matter within `radius` of `centre`."""
        self._nearby_river = None
        if self.river is not None:
            near = distance_to_segments(centre, *self.river) <= radius + self.river_reach
            if near.any():
                self._nearby_river = (self.river[0][near], self.river[1][near])

    def dry(self, centre: np.ndarray, radius: float) -> bool:
        """Whether a disc (inside the focused area) stays clear of the river and its banks."""
        return (self._nearby_river is None
                or distance_to_segments(centre, *self._nearby_river).min() > radius + self.river_reach)

    def add_tree(self, centre: np.ndarray, radius: float) -> None:
        x, y = centre
        if not (-radius <= x <= self.width + radius and -radius <= y <= self.height + radius):
            return
        if not self.dry(centre, radius):
            return
        colour = jitter(self.rng, TREE_COLOURS[self.rng.integers(len(TREE_COLOURS))])
        self.trees.append((x, y, radius, *colour))


def choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """A key of `weights`, drawn with probability proportional to its value."""
    bounds = list(itertools.accumulate(weights.values()))
    return list(weights)[bisect.bisect(bounds, rng.random() * bounds[-1])]


def fill_block(scenery: Scenery, grid: np.ndarray, lot: Lot) -> None:
    """Pick a kind for the block and fill it."""
    u0, u1, v0, v1 = lot
    kind = choose(scenery.rng, BLOCK_KINDS)
    # Everything placed lies within the block: river checks need only the segments near it.
    scenery.focus(apply(grid, np.array([(u0 + u1) / 2, (v0 + v1) / 2])),
                  math.hypot(u1 - u0, v1 - v0) / 2 + BUILDING_MAX_LONG)
    if kind == "park":
        _park(scenery, grid, lot)
    elif kind == "construction":
        unit = blob(scenery.rng, np.zeros(2), SITE_RADIUS)
        site = unit * (u1 - u0, v1 - v0) + ((u0 + u1) / 2, (v0 + v1) / 2)
        scenery.ground.append((apply(grid, site), _soil(scenery.rng)))
    else:
        _built_block(scenery, grid, lot, STYLES[kind])


def _soil(rng: np.random.Generator) -> Colour:
    return jitter(rng, SOIL_COLOURS[rng.integers(len(SOIL_COLOURS))])


def _park(scenery: Scenery, grid: np.ndarray, lot: Lot) -> None:
    """Lawn with clumps of trees, perhaps a pond and a bare patch."""
    rng = scenery.rng
    u0, u1, v0, v1 = lot
    scenery.ground.append((apply(grid, rect(*lot)), jitter(rng, PARK_GRASS)))
    short = min(u1 - u0, v1 - v0)
    pond = None
    if rng.random() < POND_PROB:
        pond = (np.array([rng.uniform(u0 + short / 3, u1 - short / 3),
                          rng.uniform(v0 + short / 3, v1 - short / 3)]),
                short * rng.uniform(*POND_RADIUS))
        scenery.water.append((apply(grid, blob(rng, *pond)), jitter(rng, WATER)))
    if rng.random() < SOIL_PATCH_PROB:
        spot = np.array([rng.uniform(u0, u1), rng.uniform(v0, v1)])
        patch = blob(rng, spot, short * rng.uniform(0.1, 0.2))
        scenery.ground.append((apply(grid, patch), _soil(rng)))
    clusters = max(1, round((u1 - u0) * (v1 - v0) / PARK_AREA_PER_CLUSTER * rng.uniform(0.5, 1.5)))
    for _ in range(clusters):
        seed_point = np.array([rng.uniform(u0, u1), rng.uniform(v0, v1)])
        for offset in rng.normal(0.0, TREE_CLUSTER_SIGMA, size=(rng.poisson(TREES_PER_CLUSTER), 2)):
            spot, radius = seed_point + offset, rng.uniform(*TREE_RADIUS)
            if not (u0 + radius <= spot[0] <= u1 - radius and v0 + radius <= spot[1] <= v1 - radius):
                continue
            if pond is not None and np.hypot(*(spot - pond[0])) < POND_CLEARANCE * pond[1] + radius:
                continue
            scenery.add_tree(apply(grid, spot), radius)


def _built_block(scenery: Scenery, grid: np.ndarray, lot: Lot, style: BlockStyle) -> None:
    """Two rows of parcels back to back, each parcel facing the road along its row."""
    rng = scenery.rng
    u0, u1, v0, v1 = lot
    if style.lot_colour is not None:
        scenery.ground.append((apply(grid, rect(*lot)), jitter(rng, style.lot_colour)))
    along_u = u1 - u0 >= v1 - v0
    length, depth = (u1 - u0, v1 - v0) if along_u else (v1 - v0, u1 - u0)
    row_depth = min(depth / 2, rng.uniform(*style.row_depth))
    # Row frames map (s along the row, t into the block) to grid (u, v); the second row is
    # mirrored so that t always grows away from its road.
    if along_u:
        rows = [translate(u0, v0), translate(u0, v1) @ np.diag([1.0, -1.0, 1.0])]
    else:
        swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        rows = [translate(u0, v0) @ swap, translate(u1, v0) @ np.diag([-1.0, 1.0, 1.0]) @ swap]
    for row in rows:
        start = 0.0
        while length - start >= style.parcel_width[0] / 2:
            width = rng.uniform(*style.parcel_width)
            if length - start - width < style.parcel_width[0] / 2:
                width = length - start      # absorb a sliver too thin for another parcel
            _parcel(scenery, grid @ row @ translate(start, 0.0), width, row_depth, style)
            start += width
    # Whatever is left between the two rows is a shared green with a few trees.
    middle = depth - 2 * row_depth
    for _ in range(rng.poisson(length * max(middle, 0.0) / BACKYARD_AREA_PER_TREE)):
        radius = rng.uniform(*TREE_RADIUS)
        if middle < 2 * radius:
            break
        spot = (rng.uniform(radius, length - radius),
                rng.uniform(row_depth + radius, depth - row_depth - radius))
        scenery.add_tree(apply(grid @ rows[0], np.array(spot)), radius)


def _parcel(scenery: Scenery, to_pixels: np.ndarray, width: float, depth: float,
            style: BlockStyle) -> None:
    """One parcel, in its frame (p along the road, q away from it): a building or a car park,
    with maybe a driveway, a shed and garden trees."""
    rng = scenery.rng
    if rng.random() < style.parking_prob:
        _parking(scenery, to_pixels, width, depth)
        return
    gap, setback = rng.uniform(*SIDE_GAP), rng.uniform(*FRONT_SETBACK)
    free = (gap, width - gap, setback, depth - BACK_GAP)
    taken = []
    house = _building(scenery, to_pixels, free, style, FRONT_BIAS)
    if house is not None:
        taken.append(house)
        if rng.random() < style.driveway_prob:
            lane = rng.uniform(*DRIVEWAY_WIDTH)
            p = rng.uniform(house[0], max(house[0], house[1] - lane))
            scenery.ground.append((apply(to_pixels, rect(p, p + lane, 0.0, house[2])),
                                   jitter(rng, CONCRETE)))
        if rng.random() < style.outbuilding_prob:
            behind = (gap, width - gap, house[3] + OUTBUILDING_GAP, depth - BACK_GAP)
            shed = _building(scenery, to_pixels, behind, style, 1.0,
                             largest=OUTBUILDING_MAX, shape="rect")
            if shed is not None:
                taken.append(shed)
    for _ in range(rng.poisson(style.trees_per_parcel)):
        radius = rng.uniform(*TREE_RADIUS)
        if width < 2 * radius or depth < 2 * radius:
            continue
        p, q = rng.uniform(radius, width - radius), rng.uniform(radius, depth - radius)
        if any(b[0] - radius < p < b[1] + radius and b[2] - radius < q < b[3] + radius for b in taken):
            continue
        scenery.add_tree(apply(to_pixels, np.array([p, q])), radius)


def _building(scenery: Scenery, to_pixels: np.ndarray, free: Box, style: BlockStyle,
              front_bias: float, largest: float = BUILDING_MAX_LONG,
              shape: str | None = None) -> Box | None:
    """Place one building inside the `free` box of a parcel; returns the box it occupies."""
    rng = scenery.rng
    free_w, free_d = free[1] - free[0], free[3] - free[2]
    if min(free_w, free_d) < BUILDING_MIN_SIDE:
        return None
    w = min(max(free_w * rng.uniform(*style.fill), BUILDING_MIN_SIDE), largest)
    d = min(max(free_d * rng.uniform(*style.fill), BUILDING_MIN_SIDE), largest)
    w, d = (min(w, BUILDING_MAX_SHORT), d) if w <= d else (w, min(d, BUILDING_MAX_SHORT))
    if rng.random() < style.free_angle_prob:
        angle = rng.uniform(-math.pi / 4, math.pi / 4)
    else:
        angle = math.radians(rng.normal(0.0, ALIGN_JITTER_DEG))
    cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
    scale = min(1.0, free_w / (w * cos + d * sin), free_d / (w * sin + d * cos))
    w, d = w * scale, d * scale
    if min(w, d) < BUILDING_MIN_SIDE:
        return None
    span_w, span_d = w * cos + d * sin, w * sin + d * cos
    slack_w, slack_d = max(free_w - span_w, 0.0), max(free_d - span_d, 0.0)   # >= 0 despite rounding
    p = free[0] + rng.uniform(0.0, slack_w) + span_w / 2
    q = free[2] + rng.uniform(0.0, slack_d * front_bias) + span_d / 2
    outline, sections = _footprint(rng, shape or choose(rng, style.shapes), w, d)
    mirror = np.diag([rng.choice((-1.0, 1.0)), rng.choice((-1.0, 1.0)), 1.0])
    local = to_pixels @ translate(p, q) @ rotate(angle) @ mirror
    footprint = snap(apply(local, outline))
    if (footprint.min() < 0 or footprint[:, 0].max() > scenery.width
            or footprint[:, 1].max() > scenery.height):
        return None
    if not scenery.dry(apply(local, np.zeros(2)), math.hypot(w, d) / 2):
        return None
    roof = choose(rng, style.roofs)
    sections = apply(local, sections)
    scenery.buildings.append(Building(
        footprint=footprint, sections=sections, roof=roof,
        colour=jitter(rng, ROOF_COLOURS[choose(rng, style.colours)], brightness=0.1),
        height=float(rng.uniform(*style.height)),
        fixtures=_fixtures(rng, sections[0]) if roof == "flat" else np.zeros((0, 4, 2))))
    return p - span_w / 2, p + span_w / 2, q - span_d / 2, q + span_d / 2


def _footprint(rng: np.random.Generator, shape: str, w: float, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Outline (open ring) and covering rectangles of a w x d footprint centred on the origin."""
    x0, x1, y0, y1 = -w / 2, w / 2, -d / 2, d / 2
    outline: list[tuple[float, float]] | np.ndarray
    if shape == "L" and min(w, d) >= 2.5 * MIN_WING:
        a, b = w * rng.uniform(0.35, 0.6), d * rng.uniform(0.35, 0.6)
        outline = [(x0, y0), (x1, y0), (x1, y1 - b), (x1 - a, y1 - b), (x1 - a, y1), (x0, y1)]
        sections = [_section(x0, x1, y0, y1 - b), _section(x0, x1 - a, y0, y1)]
    elif shape == "U" and w >= 4 * MIN_WING and d >= 2.5 * MIN_WING:
        a, b = w * rng.uniform(0.25, 0.36), d * rng.uniform(0.35, 0.6)
        outline = [(x0, y0), (x1, y0), (x1, y1), (x1 - a, y1), (x1 - a, y1 - b),
                   (x0 + a, y1 - b), (x0 + a, y1), (x0, y1)]
        sections = [_section(x0, x1, y0, y1 - b), _section(x0, x0 + a, y0, y1),
                    _section(x1 - a, x1, y0, y1)]
    else:
        outline, sections = rect(x0, x1, y0, y1), [_section(x0, x1, y0, y1)]
    return np.asarray(outline, dtype=np.float64), np.stack(sections)


def _section(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle corners ordered so that corner 0 -> corner 1 runs along a long side."""
    if x1 - x0 >= y1 - y0:
        return rect(x0, x1, y0, y1)
    return np.array([(x0, y0), (x0, y1), (x1, y1), (x1, y0)])


def _fixtures(rng: np.random.Generator, section: np.ndarray) -> np.ndarray:
    """Small rooftop units (air handlers, stair housings) on a flat roof section."""
    along, across = section[1] - section[0], section[3] - section[0]
    length, breadth = np.linalg.norm(along), np.linalg.norm(across)
    along, across = along / length, across / breadth
    boxes = []
    for _ in range(rng.integers(0, FIXTURES_MAX + 1)):
        size = rng.uniform(*FIXTURE_SIZE)
        if min(length, breadth) < size + 2 * FIXTURE_MARGIN:
            break
        corner = (section[0] + along * rng.uniform(FIXTURE_MARGIN, length - FIXTURE_MARGIN - size)
                  + across * rng.uniform(FIXTURE_MARGIN, breadth - FIXTURE_MARGIN - size))
        boxes.append([corner, corner + along * size, corner + (along + across) * size,
                      corner + across * size])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4, 2)


def _parking(scenery: Scenery, to_pixels: np.ndarray, width: float, depth: float) -> None:
    """An asphalt lot with one or two rows of stalls, about half of them taken."""
    rng = scenery.rng
    p0, p1, q0, q1 = SIDE_GAP[0], width - SIDE_GAP[0], FRONT_SETBACK[0], depth - BACK_GAP
    if p1 - p0 < STALL_WIDTH or q1 - q0 < STALL_DEPTH:
        return
    if not scenery.dry(apply(to_pixels, np.array([(p0 + p1) / 2, (q0 + q1) / 2])),
                       math.hypot(p1 - p0, q1 - q0) / 2):
        return
    scenery.ground.append((apply(to_pixels, rect(p0, p1, q0, q1)), jitter(rng, ASPHALT)))
    rows = [q0] + ([q1 - STALL_DEPTH] if q1 - q0 >= 2 * STALL_DEPTH + AISLE else [])
    stalls = np.arange(p0, p1 - STALL_WIDTH + 1e-9, STALL_WIDTH)
    for q in rows:
        lines = [((p, q), (p, q + STALL_DEPTH)) for p in np.append(stalls, stalls[-1] + STALL_WIDTH)]
        scenery.markings.extend(apply(to_pixels, np.array(lines)))
        for p in stalls[rng.random(len(stalls)) < CAR_OCCUPANCY]:
            centre_p, centre_q = p + STALL_WIDTH / 2, q + STALL_DEPTH / 2
            car = rect(centre_p - CAR_WIDTH / 2, centre_p + CAR_WIDTH / 2,
                       centre_q - CAR_LENGTH / 2, centre_q + CAR_LENGTH / 2)
            colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
            scenery.vehicles.append((apply(to_pixels, car), jitter(rng, colour)))

"""Options that make the generated city look more like real aerial imagery (the config's `synth` section).

Off by default: the city then renders bit for bit as it always has. What an option adds to the plan (roof
colours, trees) is drawn from its own generator, seeded from the city's seed, so switching one on never
changes the draws of the layout itself: the streets and buildings stay where they were.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from segcore.config import SynthConfig
from segcore.synth.blocks import TREE_COLOURS, TREE_RADIUS
from segcore.synth.layout import CityPlan, _random_field
from segcore.synth.palette import jitter
from segcore.synth.render import Look

REALISM_STREAM = 7919  # the options' generator: default_rng([seed, REALISM_STREAM])
# Metal-sheet roofs (painted or bare corrugated iron, rusting), common from East Africa to South-East Asia.
METAL_ROOF_COLOURS = ((52, 96, 160), (40, 140, 150), (70, 120, 70), (170, 50, 45), (130, 70, 45),
                      (175, 178, 180), (205, 210, 212))
METAL_ROOF_SHARE = 0.5  # of all buildings, with roof_colours "global"
HAZE_CELL = 384  # px between the haze field's lattice values: haze thickens and thins over a city
TREE_OVERHANG = (-0.2, 0.6)  # of its radius, how far a crown's centre lies outside the roof's edge (< 0: inside)


def look_of(cfg: SynthConfig, plan: CityPlan) -> Look:
    """Blur, noise and haze of `plan`'s rendering."""
    field = None
    if cfg.haze > 0:
        field = _random_field(_generator(plan.seed, 1), plan.width, plan.height, HAZE_CELL)
    return Look(cfg.blur_sigma, cfg.noise_sigma, cfg.colour_noise, cfg.haze, field)


def _generator(seed: int, option: int) -> np.random.Generator:
    return np.random.default_rng([seed, REALISM_STREAM, option])


def realistic_plan(plan: CityPlan, cfg: SynthConfig) -> CityPlan:
    """`plan` with the options that change what is in the scene: roof colours and trees over roofs."""
    buildings = plan.buildings
    if cfg.roof_colours == "global":
        rng = _generator(plan.seed, 2)
        metal = rng.random(len(buildings)) < METAL_ROOF_SHARE
        picks = rng.integers(len(METAL_ROOF_COLOURS), size=len(buildings))
        buildings = [dataclasses.replace(b, colour=jitter(rng, METAL_ROOF_COLOURS[k], brightness=0.12))
                     if m else b for b, m, k in zip(buildings, metal.tolist(), picks.tolist(), strict=True)]
    trees = plan.trees
    if cfg.trees_over_roofs > 0:
        trees = np.vstack([trees, _trees_over_roofs(plan, cfg.trees_over_roofs)])
    return dataclasses.replace(plan, buildings=buildings, trees=trees)


def _trees_over_roofs(plan: CityPlan, share: float) -> np.ndarray:
    """(n, 6) trees (x, y, radius, R, G, B) whose crowns reach over an edge of a share of the roofs."""
    rng = _generator(plan.seed, 3)
    trees = []
    for building in plan.buildings:
        if rng.random() >= share:
            continue
        ring = building.footprint
        k = int(rng.integers(len(ring)))
        start, end = ring[k], ring[(k + 1) % len(ring)]
        edge = end - start
        length = float(np.hypot(*edge))
        if length == 0:
            continue
        radius = float(rng.uniform(*TREE_RADIUS))
        # Outward normal: the footprint's signed area tells the ring's orientation.
        area = 0.5 * float(np.sum(ring[:, 0] * np.roll(ring[:, 1], -1) - np.roll(ring[:, 0], -1) * ring[:, 1]))
        normal = np.array([edge[1], -edge[0]]) / length * math.copysign(1.0, area)
        centre = start + edge * rng.uniform(0.2, 0.8) + normal * radius * rng.uniform(*TREE_OVERHANG)
        colour = jitter(rng, TREE_COLOURS[int(rng.integers(len(TREE_COLOURS)))])
        trees.append((*centre, radius, *colour))
    return np.asarray(trees, dtype=np.float64).reshape(-1, 6)

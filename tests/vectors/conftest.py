"""Fixtures and helpers of the footprint tests: a generated city, a degraded copy of its mask, block runs."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import rasterio
import shapely

from segcore.raster.grid import plan_blocks
from segcore.synth import CityPaths, generate_city
from segcore.vectors.merge import FragmentMerger
from segcore.vectors.polygonize import BlockVectors, Buildings, polygonize_block

CITY_WIDTH, CITY_HEIGHT, CITY_SEED = 1280, 1024, 4


@pytest.fixture(scope="session")
def city(tmp_path_factory) -> CityPaths:
    return generate_city(tmp_path_factory.mktemp("city"), CITY_WIDTH, CITY_HEIGHT, seed=CITY_SEED)


def read_mask(path) -> np.ndarray:
    """A label raster as a 0/1 uint8 mask."""
    with rasterio.open(path) as src:
        return (src.read(1) > 0).astype(np.uint8)


def degrade(mask: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mask, uint8 probability) like a model's: blurred, noisy edges, rounded corners, thresholded."""
    rng = np.random.default_rng(seed)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0) + rng.normal(0, 0.15, mask.shape).astype(np.float32)
    soft = cv2.GaussianBlur(soft, (0, 0), 1.0)
    probability = np.clip(np.rint(soft * 255), 0, 255).astype(np.uint8)
    return (soft > 0.5).astype(np.uint8), probability


def run_blocks(mask: np.ndarray, probability: np.ndarray | None, block_size: int, *,
               shuffle_seed: int | None = None) -> Buildings:
    """Polygonize a mosaic block by block (through to_bytes/from_bytes), merging seams; all buildings."""
    height, width = mask.shape
    blocks = plan_blocks(width, height, block_size)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(blocks)
    merger, found = FragmentMerger(), []
    for block in blocks:
        core = np.s_[block.row:block.row + block.height, block.col:block.col + block.width]
        vectors = polygonize_block(mask[core], None if probability is None else probability[core], block,
                                   width, height)
        found.append(merger.add(BlockVectors.from_bytes(vectors.to_bytes())))
    merger.finish()
    return Buildings.concat(found)


def canonical(buildings: Buildings) -> list[tuple]:
    """Buildings as comparable tuples (id, WKT, pixels, probability sum), by id; block left out."""
    probability = buildings.probability_sum
    return sorted((int(buildings.id[i]), shapely.normalize(buildings.geometry[i]).wkt, int(buildings.pixels[i]),
                   None if probability is None else int(probability[i])) for i in range(len(buildings)))

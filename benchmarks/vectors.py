"""Footprint benchmark: vertices, fit to the true footprints and CPU time of raw, simplified and regularized outlines.

    python benchmarks/vectors.py --mask out/city/mask.tif --truth data/city/buildings.geojson
    python benchmarks/vectors.py --size 4096 --seed 0     # a generated city and a degraded copy of its mask

With --mask (a segment run's mask.tif: 1 building, 0 background, 255 nodata; --probability its prob.tif) the
mask is read block by block. Without it, a city of --size pixels is generated and its true mask degraded like
a model's (Gaussian blur, noise, blur, threshold at 0.5), so the benchmark needs no trained model.

The mask goes through the library as the pipeline runs it: polygonize each block (and store it as bytes),
merge the seams in row-major order, then, for each variant (raw pixel outlines, simplified, regularized;
the other settings from --config), clean each batch of finished buildings, score it against the truth
(ObjectEvaluator) and write it (--format). Reported per variant: median exterior vertices per building,
the mean IoU of matched buildings and F1 (SpaceNet matching, IoU >= 0.5), and the CPU seconds of each stage
(polygonize, merge, clean, write; evaluate apart), with polygonize + merge + clean per megapixel. CPU time
is this process's (time.process_time), so other load on the machine does not count.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt, table

from segcore.config import load_config
from segcore.raster.grid import plan_blocks
from segcore.raster.io import inspect_raster
from segcore.vectors.merge import FragmentMerger
from segcore.vectors.objects import ObjectEvaluator
from segcore.vectors.polygonize import BlockVectors, polygonize_block
from segcore.vectors.shapes import GroundFrame, clean_buildings, reach_px, to_footprints
from segcore.vectors.truth import read_truth_polygons
from segcore.vectors.write import SUFFIXES, open_vector_writer


def degrade(mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask, uint8 probability) like a model's: soft, noisy edges and rounded corners, thresholded at 0.5."""
    rng = np.random.default_rng(seed)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0)
    soft += rng.normal(0, 0.15, mask.shape).astype(np.float32)
    soft = cv2.GaussianBlur(soft, (0, 0), 1.0)
    return (soft > 0.5).astype(np.uint8), np.clip(np.rint(soft * 255), 0, 255).astype(np.uint8)


def generated(size: int, seed: int, folder: Path) -> tuple[str, str, np.ndarray, np.ndarray]:
    from segcore.synth import generate_city

    city = generate_city(folder, size, size, seed=seed)
    with rasterio.open(city.labels) as src:
        mask, probability = degrade((src.read(1) > 0).astype(np.uint8), seed)
    return str(city.labels), str(city.buildings), mask, probability


def polygonize_and_merge(read, width: int, height: int, block_size: int) -> tuple[list, dict]:
    """Finished buildings per block, in row-major order, and the CPU seconds of both stages."""
    seconds = {"polygonize": 0.0, "merge": 0.0}
    merger, finished = FragmentMerger(), []
    for block in plan_blocks(width, height, block_size):
        mask, probability = read(block.core)
        start = time.process_time()
        stored = polygonize_block(mask, probability, block, width, height).to_bytes()
        middle = time.process_time()
        finished.append((block, merger.add(BlockVectors.from_bytes(stored)), merger.pending_bounds()))
        seconds["polygonize"] += middle - start
        seconds["merge"] += time.process_time() - middle
    merger.finish()
    return finished, seconds


def run_variant(name: str, cfg, finished: list, frame: GroundFrame, truths, blocks, fmt_name: str,
                folder: Path) -> dict:
    seconds = {"clean": 0.0, "write": 0.0, "evaluate": 0.0}
    evaluator = ObjectEvaluator(blocks, truths, iou_threshold=cfg.match_iou, reach=reach_px(cfg, frame))
    vertices: list[np.ndarray] = []
    with open_vector_writer(str(folder / f"{name}{SUFFIXES[fmt_name]}"), fmt_name,
                            frame.output_crs(cfg.crs)) as writer:
        for block, buildings, pending in finished:
            start = time.process_time()
            clean = clean_buildings(buildings, frame, cfg)
            footprints = to_footprints(clean, frame, cfg.crs, "benchmark")
            cleaned = time.process_time()
            writer.write(footprints)
            written = time.process_time()
            if truths is not None:
                evaluator.add(block, clean, pending)
            seconds["clean"] += cleaned - start
            seconds["write"] += written - cleaned
            seconds["evaluate"] += time.process_time() - written
            vertices.append(shapely.get_num_coordinates(shapely.get_exterior_ring(clean.geometry)) - 1)
        start = time.process_time()
    seconds["write"] += time.process_time() - start  # closing: footers, or the GDAL formats' one write
    counts = evaluator.finish() if truths is not None else None
    every = np.concatenate(vertices) if vertices else np.zeros(0)
    return dict(variant=name, buildings=writer.count, median_vertices=float(np.median(every)) if len(every) else None,
                mean_iou=counts.mean_iou if counts else None, f1=counts.f1 if counts else None, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mask", help="a mask raster (1 building, 0 background, 255 nodata)")
    parser.add_argument("--probability", help="its uint8 probability raster (prob.tif), optional")
    parser.add_argument("--truth", help="true footprints (GeoJSON, GeoPackage, FlatGeobuf, GeoParquet)")
    parser.add_argument("--size", type=int, default=4096, help="generated city side in pixels (without --mask)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-size", type=int, default=2304, help="as segment.block_size")
    parser.add_argument("--format", default="geoparquet", choices=sorted(SUFFIXES))
    parser.add_argument("--config", help="a YAML config whose `polygons` section is the base of the variants")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    base = load_config(args.config).polygons
    with tempfile.TemporaryDirectory(prefix="segcore-bench-vectors-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        started = time.perf_counter()
        if args.mask:
            mask_path, truth_path = args.mask, args.truth
            mask_src = stack.enter_context(rasterio.open(args.mask))
            prob_src = stack.enter_context(rasterio.open(args.probability)) if args.probability else None

            def read(window: Window):
                return mask_src.read(1, window=window), prob_src.read(1, window=window) if prob_src else None
        else:
            mask_path, truth_path, mask, probability = generated(args.size, args.seed, folder / "city")

            def read(window: Window):
                rows = slice(window.row_off, window.row_off + window.height)
                cols = slice(window.col_off, window.col_off + window.width)
                return mask[rows, cols], probability[rows, cols]
        prepared = time.perf_counter() - started
        info = inspect_raster(mask_path)
        frame = GroundFrame.of(info)
        blocks = plan_blocks(info.width, info.height, args.block_size)
        truths = read_truth_polygons(truth_path, info) if truth_path else None
        finished, shared = polygonize_and_merge(read, info.width, info.height, args.block_size)
        variants = {"raw": dataclasses.replace(base, simplify_px=0.0, regularize=False),
                    "simplified": dataclasses.replace(base, regularize=False),
                    "regularized": dataclasses.replace(base, regularize=True,
                                                       simplify_px=base.simplify_px or 1.0)}
        results = [run_variant(name, cfg, finished, frame, truths, blocks, args.format, folder)
                   for name, cfg in variants.items()]
    megapixels = info.width * info.height / 1e6
    print(f"# Footprints: {info.width}x{info.height} px ({megapixels:.1f} Mpx), block {args.block_size}, "
          f"{'mask ' + args.mask if args.mask else f'generated city seed {args.seed}, degraded mask'} "
          f"({prepared:.1f} s to prepare), {len(truths.geometry) if truths else 0} true buildings, "
          f"format {args.format}; polygonize {shared['polygonize']:.2f} s, merge {shared['merge']:.2f} s CPU\n")
    rows = []
    for result in results:
        s = result["seconds"]
        vector_stage = shared["polygonize"] + shared["merge"] + s["clean"]
        result["cpu_s_per_mpx"] = vector_stage / megapixels
        rows.append([result["variant"], result["buildings"], fmt(result["median_vertices"], 1),
                     fmt(result["mean_iou"], 4), fmt(result["f1"], 4), fmt(shared["polygonize"]),
                     fmt(shared["merge"]), fmt(s["clean"]), fmt(s["write"]), fmt(s["evaluate"]),
                     fmt(result["cpu_s_per_mpx"], 4)])
    print(table(["variant", "buildings", "median vertices", "mean IoU (matched)", "F1", "polygonize s",
                 "merge s", "clean s", "write s", "evaluate s", "polygonize+merge+clean s/Mpx"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(width=info.width, height=info.height, block_size=args.block_size,
                                                   shared=shared, variants=results), indent=1) + "\n")


if __name__ == "__main__":
    main()

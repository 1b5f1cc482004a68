"""A mosaic's block files streamed into its outputs, one block at a time (memory flat in the mosaic's size):

    OUT/<key>/mask.tif       COG on the input's grid: 1 building, 0 background, 255 nodata
    OUT/<key>/prob.tif       COG of round(p * 255), when segment.write_probability
    OUT/<key>/buildings.*    footprints (polygons.format), when segment.write_polygons
    OUT/<key>/preview.png    the overlay, when segment.preview_size > 0
    OUT/<key>/metrics.json   pixel, tile and building counts; with labels, pixel and object metrics

Every file appears under its final name only once complete, and mask.tif last: a mosaic whose mask.tif
exists is complete. Ray-free: the segment pipeline runs `assemble_mosaic` as a Ray task per mosaic.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Optional

from segcore.config import Config
from segcore.labels import open_labels
from segcore.metrics import ConfusionCounts
from segcore.outputs.blockfile import block_file, load_block
from segcore.outputs.components import ComponentCounter
from segcore.outputs.footprints import FOOTPRINT_FILES, MosaicFootprints, footprint_file
from segcore.outputs.preview import PreviewCanvas
from segcore.raster.cog import MASK_BUILDING, MASK_NODATA, CogWriter
from segcore.raster.grid import Block
from segcore.raster.io import RasterInfo
from segcore.storage import filesystem, join, publish_file, write_bytes

OUTPUT_FILES = ("mask.tif", "prob.tif", "preview.png", "metrics.json", *FOOTPRINT_FILES)


@dataclass(frozen=True)
class MosaicOutputs:
    """Where one mosaic's block files are and where its outputs go."""

    info: RasterInfo
    key: str  # its folder's name under OUT
    blocks: tuple[Block, ...]
    work: str  # the folder of its block files
    out: str  # OUT/<key>
    labels: Optional[str] = None  # ground truth: a mask raster on its grid, or polygons
    run: dict = field(default_factory=dict, hash=False)  # what this run did for it (blocks computed, rates)


def remove_outputs(mosaic: MosaicOutputs, cfg: Config) -> None:
    """Delete a mosaic's earlier final outputs, so that a mask which exists is always a complete run's."""
    fs = filesystem(mosaic.out, cfg.s3)
    for name in OUTPUT_FILES:
        path = join(mosaic.out, name)
        if fs.exists(path):
            fs.rm(path)


def assemble_mosaic(mosaic: MosaicOutputs, cfg: Config) -> dict:
    """Stream `mosaic`'s block files into its outputs, publishing mask.tif last; returns its metrics."""
    seg, info = cfg.segment, mosaic.info
    local = tempfile.mkdtemp(prefix="segcore-assemble-")
    writers = {"mask": CogWriter(local, "mask", info, nodata=MASK_NODATA, resampling="NEAREST")}
    if seg.write_probability:
        writers["prob"] = CogWriter(local, "prob", info, nodata=None, resampling="AVERAGE", masked=True)
    truth = open_labels(mosaic.labels, info, cfg.s3) if mosaic.labels else None
    footprints = MosaicFootprints(info, mosaic.key, list(mosaic.blocks), os.path.join(
        local, footprint_file(cfg.polygons.format)), cfg, truth, mosaic.labels) if seg.write_polygons else None
    canvas = PreviewCanvas(info.width, info.height, seg.preview_size) if seg.preview_size else None
    try:
        components, confusion = ComponentCounter(info.width), ConfusionCounts()
        totals = dict(valid=0, building=0, tiles=0, skipped=0)
        for block in mosaic.blocks:
            result = load_block(join(mosaic.work, block_file(block.index)), cfg.s3)
            mask, window = result.mask, block.core
            valid, building = mask != MASK_NODATA, mask == MASK_BUILDING
            writers["mask"].write(mask, window)
            if "prob" in writers:
                writers["prob"].write(result.probability, window, valid)
            if footprints is not None:
                outlines = footprints.add(block, result.vectors, mask, result.probability)
                if canvas is not None and outlines:
                    canvas.draw_polygons(outlines)
            else:
                components.add(mask, block)
            if canvas is not None and result.thumbnail is not None:
                canvas.add(block, result.thumbnail, mask)
            for name, value in (("valid", valid.sum()), ("building", building.sum()),
                                ("tiles", result.tiles_computed), ("skipped", result.tiles_skipped)):
                totals[name] += int(value)
            if truth is not None:
                confusion += ConfusionCounts.from_arrays(building, truth.read(window), valid)
        files = {name: writer.finish() for name, writer in writers.items()}
        metrics = dict(mosaic.run, width=info.width, height=info.height, georeferenced=info.georeferenced,
                       pixels=info.width * info.height, valid_pixels=totals["valid"],
                       tiles=dict(computed=totals["tiles"], skipped_nodata=totals["skipped"]),
                       building_pixels=totals["building"],
                       building_fraction=totals["building"] / totals["valid"] if totals["valid"] else 0.0)
        if truth is not None:
            metrics.update(labels=mosaic.labels, **confusion.summary())
        if footprints is not None:
            vectors = footprints.finish()
            metrics.update(building_count=vectors.pop("buildings_raw"), **vectors)
            publish_file(footprints.writer.path, join(mosaic.out, footprint_file(cfg.polygons.format)), cfg.s3)
        else:
            metrics["building_count"] = components.count
        if "prob" in files:
            publish_file(files["prob"], join(mosaic.out, "prob.tif"), cfg.s3)
        if canvas is not None:
            write_bytes(join(mosaic.out, "preview.png"), canvas.png(), cfg.s3)
        write_bytes(join(mosaic.out, "metrics.json"), json.dumps(metrics, indent=1).encode(), cfg.s3)
        publish_file(files["mask"], join(mosaic.out, "mask.tif"), cfg.s3)
        return metrics
    except BaseException:
        if footprints is not None:
            footprints.abort()
        raise
    finally:
        for writer in writers.values():
            writer.close()
        if truth is not None:
            truth.close()
        shutil.rmtree(local, ignore_errors=True)

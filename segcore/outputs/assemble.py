"""A mosaic's block files streamed into its outputs, one block at a time (memory flat in the mosaic's size):

    OUT/<key>/mask.tif       COG on the input's grid: 1 building, 0 background, 255 nodata
    OUT/<key>/prob.tif       COG of round(p * 255), when segment.write_probability
    OUT/<key>/buildings.*    footprints (polygons.format), when segment.write_polygons
    OUT/<key>/preview.png    the overlay, when segment.preview_size > 0
    OUT/<key>/metrics.json   pixel, tile and building counts; with labels, pixel and object metrics

Every file appears under its final name only once complete, and mask.tif last: a mosaic whose mask.tif
exists is complete. `MosaicAssembly` takes the blocks as they are written, in any order, so that a mosaic is
assembled while the stream goes on and only its last blocks and the COG's finish remain after it. Ray-free:
the segment pipeline runs it in its assembly actors (`pipelines.assembly`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

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
    labels: str | None = None  # ground truth: a mask raster on its grid, or polygons


def remove_outputs(mosaic: MosaicOutputs, cfg: Config) -> None:
    """Delete a mosaic's earlier final outputs, so that a mask which exists is always a complete run's."""
    fs = filesystem(mosaic.out, cfg.s3)
    for name in OUTPUT_FILES:
        path = join(mosaic.out, name)
        if fs.exists(path):
            fs.rm(path)


class _Ledger:
    """CPU seconds of this process by step (`with ledger("cog"): ...`)."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, step: str):
        started = time.process_time()
        try:
            yield
        finally:
            self.seconds[step] += time.process_time() - started


class _Assembly:
    """One mosaic's outputs, fed its blocks in plan order (`add`), then finished and published (`publish`)."""

    def __init__(self, mosaic: MosaicOutputs, cfg: Config, local: str):
        seg, info = cfg.segment, mosaic.info
        self.mosaic, self.cfg, self.ledger = mosaic, cfg, _Ledger()
        self.writers = {"mask": CogWriter(local, "mask", info, nodata=MASK_NODATA, resampling="NEAREST")}
        if seg.write_probability:
            self.writers["prob"] = CogWriter(local, "prob", info, nodata=None, resampling="AVERAGE", masked=True)
        self.truth = open_labels(mosaic.labels, info, cfg.s3) if mosaic.labels else None
        self.footprints = MosaicFootprints(info, mosaic.key, list(mosaic.blocks), os.path.join(
            local, footprint_file(cfg.polygons.format)), cfg, self.truth, mosaic.labels) if seg.write_polygons else None
        self.canvas = PreviewCanvas(info.width, info.height, seg.preview_size) if seg.preview_size else None
        self.components, self.confusion = ComponentCounter(info.width), ConfusionCounts()
        self.totals: Counter[str] = Counter()

    def add(self, block: Block) -> None:
        with self.ledger("load_block"):
            result = load_block(join(self.mosaic.work, block_file(block.index)), self.cfg.s3)
        mask, window = result.mask, block.core
        valid, building = mask != MASK_NODATA, mask == MASK_BUILDING
        with self.ledger("cog"):
            self.writers["mask"].write(mask, window)
            if "prob" in self.writers:
                assert result.probability is not None  # block files keep probabilities whenever prob.tif is wanted
                self.writers["prob"].write(result.probability, window, valid)
        if self.footprints is not None:
            with self.ledger("footprints"):
                outlines = self.footprints.add(block, result.vectors, mask, result.probability)
            if self.canvas is not None and outlines:
                with self.ledger("preview"):
                    self.canvas.draw_polygons(outlines)
        with self.ledger("metrics"):
            if self.footprints is None:
                self.components.add(mask, block)
            self.totals.update(valid=int(np.count_nonzero(valid)), building=int(np.count_nonzero(building)),
                               tiles=result.tiles_computed, skipped=result.tiles_skipped)
            if self.truth is not None:
                self.confusion += ConfusionCounts.from_arrays(building, self.truth.read(window), valid)
        if self.canvas is not None and result.thumbnail is not None:
            with self.ledger("preview"):
                self.canvas.add(block, result.thumbnail, mask)

    def metrics(self, run: dict) -> dict:
        info, totals = self.mosaic.info, self.totals
        metrics = dict(run, width=info.width, height=info.height, georeferenced=info.georeferenced,
                       pixels=info.width * info.height, valid_pixels=totals["valid"],
                       tiles=dict(computed=totals["tiles"], skipped_nodata=totals["skipped"]),
                       building_pixels=totals["building"],
                       building_fraction=totals["building"] / totals["valid"] if totals["valid"] else 0.0,
                       building_count=self.components.count)
        if self.truth is not None:
            metrics.update(labels=self.mosaic.labels, **self.confusion.summary())
        return metrics

    def publish(self, run: dict) -> dict:
        """Finish every output and publish it, mask.tif last; the metrics, as metrics.json holds them, with `run`
        (what this run did for the mosaic) first."""
        cfg, out = self.cfg, self.mosaic.out
        with self.ledger("cog"):
            files = {name: writer.finish() for name, writer in self.writers.items()}
        metrics = self.metrics(run)
        if self.footprints is not None:
            with self.ledger("footprints"):
                vectors = self.footprints.finish()
            metrics.update(building_count=vectors.pop("buildings_raw"), **vectors)
            publish_file(self.footprints.writer.path, join(out, footprint_file(cfg.polygons.format)), cfg.s3)
        if "prob" in files:
            publish_file(files["prob"], join(out, "prob.tif"), cfg.s3)
        if self.canvas is not None:
            with self.ledger("preview"):
                png = self.canvas.png()
            write_bytes(join(out, "preview.png"), png, cfg.s3)
        metrics["assembly_cpu_s"] = {step: round(seconds, 4) for step, seconds in sorted(self.ledger.seconds.items())}
        write_bytes(join(out, "metrics.json"), json.dumps(metrics, indent=1).encode(), cfg.s3)
        publish_file(files["mask"], join(out, "mask.tif"), cfg.s3)
        return metrics

    def close(self, failed: bool) -> None:
        if failed and self.footprints is not None:
            self.footprints.abort()
        for writer in self.writers.values():
            writer.close()
        if self.truth is not None:
            self.truth.close()


class MosaicAssembly:
    """One mosaic's assembly, fed the indexes of its written blocks in any order (`add_ready`): each block is added
    once every block before it in plan order has been (the building counter and the footprints need plan order),
    so memory stays flat. `publish` once all are in; `close` always."""

    def __init__(self, mosaic: MosaicOutputs, cfg: Config):
        self.started_at = time.time()
        self.local = tempfile.mkdtemp(prefix="segcore-assemble-")
        try:
            self.assembly = _Assembly(mosaic, cfg, self.local)
        except BaseException:
            shutil.rmtree(self.local, ignore_errors=True)
            raise
        self.ready: set[int] = set()
        self.added = 0  # blocks added, a prefix of mosaic.blocks

    def add_ready(self, indexes: Iterable[int]) -> None:
        blocks = self.assembly.mosaic.blocks
        self.ready.update(indexes)
        while self.added < len(blocks) and blocks[self.added].index in self.ready:
            self.ready.discard(blocks[self.added].index)
            self.assembly.add(blocks[self.added])
            self.added += 1

    def publish(self, run: dict) -> dict:
        """Publish the outputs (every block must be in); the metrics, with the assembly's start and end times."""
        mosaic = self.assembly.mosaic
        if self.added < len(mosaic.blocks):  # a driver bug, never a partial mosaic published
            raise RuntimeError(f"{mosaic.out}: {len(mosaic.blocks) - self.added} of {len(mosaic.blocks)} blocks "
                               "were never added to the assembly")
        metrics = self.assembly.publish(run)
        return dict(metrics, assembly_started_at=self.started_at, assembly_finished_at=time.time())

    def close(self, failed: bool) -> None:
        try:
            self.assembly.close(failed)
        finally:
            shutil.rmtree(self.local, ignore_errors=True)


def assemble_mosaic(mosaic: MosaicOutputs, cfg: Config, run: dict) -> dict:
    """Every block file of `mosaic` (all written) into its outputs, mask.tif last; its metrics, as
    MosaicAssembly.publish returns them."""
    assembly, failed = MosaicAssembly(mosaic, cfg), True
    try:
        assembly.add_ready(block.index for block in mosaic.blocks)
        metrics = assembly.publish(run)
        failed = False
        return metrics
    finally:
        assembly.close(failed)

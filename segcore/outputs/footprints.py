"""A mosaic's building footprints, assembled from its blocks' raw vectors, and scored against labels.

Blocks come in plan order with the vectors their writer made (`polygonize.BlockVectors`). Buildings cut by
seams are merged (`FragmentMerger`), cleaned (`shapes.clean_buildings`), written as they finish
(`write.VectorWriter`) and, with labels, matched one-to-one with true buildings (`objects.ObjectEvaluator`).
Memory stays at about a row of blocks' buildings plus, for vector labels, the true polygons.
"""
from __future__ import annotations

import sys

import numpy as np
import shapely
from rasterio.control import GroundControlPoint
from rasterio.transform import from_gcps

from segcore.config import Config
from segcore.labels import MaskRaster, Polygons
from segcore.raster.grid import Block
from segcore.raster.io import RasterInfo
from segcore.vectors.merge import FragmentMerger
from segcore.vectors.objects import ObjectEvaluator
from segcore.vectors.polygonize import BlockVectors, polygonize_block
from segcore.vectors.shapes import GroundFrame, clean_buildings, reach_px, to_footprints
from segcore.vectors.truth import read_truth_polygons
from segcore.vectors.write import SUFFIXES, VectorWriter

FOOTPRINT_FILES = tuple(f"buildings{suffix}" for suffix in SUFFIXES.values())


def footprint_file(format: str) -> str:
    return f"buildings{SUFFIXES[format]}"


def ground_frame(info: RasterInfo) -> GroundFrame:
    """The raster's frame; a scene georeferenced by ground control points only gets the affine transform that
    fits its GCPs (GDAL's first-order GCP transform), in the GCPs' CRS."""
    if info.crs is None and info.gcps and info.gcp_crs:
        points = [GroundControlPoint(*point) for point in info.gcps]
        frame = GroundFrame.of(RasterInfo(info.path, info.width, info.height, info.count, info.dtype, info.gcp_crs,
                                          tuple(from_gcps(points))[:6], info.nodata))
        return frame
    return GroundFrame.of(info)


class MosaicFootprints:
    """Feed every block of a mosaic to `add`, in plan order; `finish` closes the file and returns the metrics."""

    def __init__(self, info: RasterInfo, key: str, blocks: list[Block], local_path: str, cfg: Config,
                 labels: MaskRaster | Polygons | None = None, labels_path: str | None = None):
        self.info, self.key, self.cfg = info, key, cfg.polygons
        self.frame = ground_frame(info)
        if self.frame.crs is None:
            print(f"warning: {info.path}: no CRS: footprints are in pixel coordinates, areas in square pixels",
                  file=sys.stderr, flush=True)
        self.writer = VectorWriter(local_path, self.cfg.format, self.frame.output_crs(self.cfg.crs))
        self.merger = FragmentMerger()
        self.raw = 0  # buildings before cleaning (the mask's 4-connected components)
        self.evaluator: ObjectEvaluator | None = None
        self.label_raster: MaskRaster | None = None
        if labels is not None:
            reach = reach_px(self.cfg, self.frame)
            if isinstance(labels, MaskRaster):
                self.label_raster = labels
                self.evaluator = ObjectEvaluator(blocks, iou_threshold=self.cfg.match_iou, reach=reach)
            else:
                truths = read_truth_polygons(labels_path or labels.path, info, cfg.s3)
                self.evaluator = ObjectEvaluator(blocks, truths, iou_threshold=self.cfg.match_iou, reach=reach)

    def add(self, block: Block, vectors: bytes | None, mask: np.ndarray,
            probability: np.ndarray | None) -> list[shapely.Geometry]:
        """Take one block (its stored vectors, or its mask to polygonize); returns the clean outlines it finished,
        in mosaic pixel coordinates (for the preview)."""
        block_vectors = BlockVectors.from_bytes(vectors) if vectors is not None else polygonize_block(
            mask, probability, block, self.info.width, self.info.height)
        finished = self.merger.add(block_vectors)
        self.raw += len(finished)
        clean = clean_buildings(finished, self.frame, self.cfg)
        if len(clean):
            self.writer.write(to_footprints(clean, self.frame, self.cfg.crs, self.key))
        if self.evaluator is not None:
            truth = None
            if self.label_raster is not None:
                labels = (self.label_raster.read(block.core) > 0).astype(np.uint8)
                truth = polygonize_block(labels, None, block, self.info.width, self.info.height)
            self.evaluator.add(block, clean, self.merger.pending_bounds(), truth)
        return list(clean.geometry)

    def finish(self) -> dict:
        """Close the file; the footprint count and, with labels, the object metrics (`objects` in metrics.json)."""
        self.merger.finish()
        count = self.writer.close()
        metrics: dict = {"buildings_raw": self.raw, "polygons": count, "polygon_format": self.cfg.format}
        if self.evaluator is not None:
            metrics["objects"] = self.evaluator.finish().summary()
        return metrics

    def abort(self) -> None:
        self.writer.abort()

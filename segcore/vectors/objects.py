"""Object-level metrics: predicted buildings matched one-to-one with true ones, SpaceNet's way, streamed.

Matching (SpaceNet's scorer): predictions are taken in order of confidence (highest first; then by id); each
one is matched to the unmatched true building it has the highest IoU with, if that IoU is >= the threshold
(0.5); else it is a false positive. True buildings left unmatched are misses. Among disjoint predictions (a
mask's buildings are disjoint) a true building has IoU > 0.5 with at most one prediction, and disjoint true
buildings with at most one per prediction, so the order only matters where labels overlap (a prediction
over two overlapping true buildings takes the one it fits best; the other is missed) or at exact ties.

Streaming: blocks arrive one at a time with the predicted buildings they finished (FragmentMerger) and,
for a label raster, the block's true buildings, merged across seams the same way. Matching only involves
buildings that overlap, so buildings are scored in *clusters* (connected by overlap): a cluster is scored
once every block under its members' bounding boxes has arrived and no unfinished building (a fragment of
the prediction's or the labels' merger) can still join it. Held state: the true polygons of a vector label
file (all of them, as read), the merger of a label raster, and the buildings near blocks not yet added.
Fed in row-major order, that is about a row of blocks' worth of buildings.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely

from segcore.metrics import ratio
from segcore.raster.grid import Block
from segcore.vectors.merge import FragmentMerger
from segcore.vectors.polygonize import BlockVectors, Buildings, geometry_array, polygonize_block
from segcore.vectors.truth import TruthPolygons

IOU_BINS = 20  # matched-IoU histogram: bins of 0.05 over [0, 1], the last one closed
IOU_UNIT = 1e-9  # matched IoUs are summed as integers of this unit, so sums are exact in any order


@dataclass(frozen=True)
class ObjectCounts:
    """Counts that add up exactly across clusters, blocks and mosaics (like metrics.ConfusionCounts)."""

    true: int = 0
    predicted: int = 0
    matched: int = 0
    iou_sum: int = 0  # matched pairs' IoUs in IOU_UNITs
    iou_histogram: tuple[int, ...] = (0,) * IOU_BINS
    labels_repaired: int = 0  # invalid label geometries made valid
    labels_skipped: int = 0  # label features without a usable geometry

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        return ObjectCounts(self.true + other.true, self.predicted + other.predicted, self.matched + other.matched,
                            self.iou_sum + other.iou_sum,
                            tuple(a + b for a, b in zip(self.iou_histogram, other.iou_histogram, strict=True)),
                            self.labels_repaired + other.labels_repaired, self.labels_skipped + other.labels_skipped)

    @classmethod
    def from_matches(cls, true: int, predicted: int, ious: Sequence[float]) -> ObjectCounts:
        bins = np.minimum((np.asarray(ious, float) * IOU_BINS).astype(int), IOU_BINS - 1)
        histogram = np.bincount(bins, minlength=IOU_BINS)
        units = sum(round(iou / IOU_UNIT) for iou in ious)
        return cls(true, predicted, len(ious), units, tuple(int(v) for v in histogram))

    @property
    def precision(self) -> float:
        return ratio(self.matched, self.predicted)

    @property
    def recall(self) -> float:
        return ratio(self.matched, self.true)

    @property
    def f1(self) -> float:
        return ratio(2 * self.matched, self.true + self.predicted)

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the matched pairs."""
        return ratio(self.iou_sum * IOU_UNIT, self.matched)

    def to_array(self) -> np.ndarray:
        """The counts as one int64 vector (they add up as vectors do), for passing between processes."""
        return np.array([self.true, self.predicted, self.matched, self.iou_sum, *self.iou_histogram,
                         self.labels_repaired, self.labels_skipped], np.int64)

    @classmethod
    def from_array(cls, values: np.ndarray) -> ObjectCounts:
        true, predicted, matched, iou_sum, *rest = (int(v) for v in values)
        return cls(true, predicted, matched, iou_sum, tuple(rest[:IOU_BINS]), rest[IOU_BINS], rest[IOU_BINS + 1])

    def summary(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "mean_iou": self.mean_iou,
                "true": self.true, "predicted": self.predicted, "matched": self.matched,
                "iou_histogram": {"edges": [round(k / IOU_BINS, 4) for k in range(IOU_BINS + 1)],
                                  "counts": list(self.iou_histogram)},
                "labels_repaired": self.labels_repaired, "labels_skipped": self.labels_skipped}


def spacenet_match(predicted: np.ndarray, confidence: np.ndarray, ids: np.ndarray, truths: np.ndarray,
                   threshold: float) -> list[tuple[int, int, float]]:
    """(prediction, truth, IoU) of each match, by SpaceNet's rule (see the module doc)."""
    if not len(predicted) or not len(truths):
        return []
    pred_index, truth_index = shapely.STRtree(truths).query(predicted, predicate="intersects")
    inter = shapely.area(shapely.intersection(predicted[pred_index], truths[truth_index]))
    union = shapely.area(predicted[pred_index]) + shapely.area(truths[truth_index]) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-300), 0.0)
    candidates: dict[int, list[tuple[float, int]]] = {}
    for p, t, value in zip(pred_index.tolist(), truth_index.tolist(), iou.tolist(), strict=True):
        candidates.setdefault(p, []).append((value, t))
    order = sorted(range(len(predicted)), key=lambda p: (-np.nan_to_num(confidence[p], nan=0.0), ids[p]))
    used: set[int] = set()
    matches = []
    for p in order:
        free = [(value, -t) for value, t in candidates.get(p, []) if t not in used]
        if free:
            value, t = max(free)  # highest IoU; at a tie, the lowest truth index
            if value >= threshold:
                used.add(-t)
                matches.append((p, -t, value))
    return matches


def mask_object_counts(predicted: np.ndarray, truth: np.ndarray, probability: np.ndarray | None = None,
                       iou_threshold: float = 0.5) -> ObjectCounts:
    """Object counts of one small image (a training patch) scored alone: its predicted and true buildings, each a
    4-connected component of its boolean mask, matched SpaceNet's way (`probability`, uint8, orders the
    predictions by confidence). Mosaics stream through ObjectEvaluator instead, seams included."""
    height, width = predicted.shape
    whole = Block(0, 0, 0, height, width, 0, 0, 0, 0)
    found = polygonize_block(predicted.astype(np.uint8), probability, whole, width, height).complete
    true = polygonize_block(truth.astype(np.uint8), None, whole, width, height).complete
    matches = spacenet_match(found.geometry, found.confidence, found.id, true.geometry, iou_threshold)
    return ObjectCounts.from_matches(len(true), len(found), [iou for _, _, iou in matches])


@dataclass
class _Item:
    truth: bool
    geometry: shapely.Geometry
    confidence: float = float("nan")
    id: int = 0
    blocks_left: int = 0  # blocks under its bounding box not added yet
    neighbours: list[int] = field(default_factory=list)


class ObjectEvaluator:
    """Object metrics for one mosaic, fed block by block (see the module doc).

    `truths`: polygons from a vector label file, or None for a label raster, whose blocks then come with
    `add`. `reach`: how many pixels clean predictions may lie outside their pixels (`shapes.reach_px`).
    """

    def __init__(self, blocks: Sequence[Block], truths: TruthPolygons | None = None, *,
                 iou_threshold: float = 0.5, reach: float = 0.0):
        self.threshold, self.reach = iou_threshold, reach
        self._rows = np.array(sorted({b.row for b in blocks}))
        self._cols = np.array(sorted({b.col for b in blocks}))
        self._grid = np.full((len(self._rows), len(self._cols)), -1, np.int64)
        for b in blocks:
            self._grid[np.searchsorted(self._rows, b.row), np.searchsorted(self._cols, b.col)] = b.index
        self._added: set[int] = set()
        self._items: dict[int, _Item] = {}
        self._waiting: dict[int, list[int]] = {}  # block -> items whose boxes it lies under
        self._ready: set[int] = set()
        self._next = 0
        self.counts = ObjectCounts()
        self._static = np.zeros(0, object)
        self._truth_merger: FragmentMerger | None = None
        if truths is None:
            self._truth_merger = FragmentMerger()
        else:
            self.counts = ObjectCounts(labels_repaired=truths.repaired, labels_skipped=truths.skipped)
            self._static = truths.geometry
            self._tree = shapely.STRtree(self._static)
            self._register(truths.geometry, truth=True)  # items 0 .. len - 1: the static truths

    def _blocks_under(self, bounds: np.ndarray) -> np.ndarray:
        xmin, ymin, xmax, ymax = bounds
        r0 = max(int(np.searchsorted(self._rows, ymin, "right")) - 1, 0)
        r1 = max(int(np.searchsorted(self._rows, ymax, "left")) - 1, 0)
        c0 = max(int(np.searchsorted(self._cols, xmin, "right")) - 1, 0)
        c1 = max(int(np.searchsorted(self._cols, xmax, "left")) - 1, 0)
        under = self._grid[r0:r1 + 1, c0:c1 + 1].ravel()
        return under[under >= 0]

    def _register(self, geometry: np.ndarray, *, truth: bool, confidence: np.ndarray | None = None,
                  ids: np.ndarray | None = None) -> list[int]:
        keys = []
        for k, (polygon, bounds) in enumerate(zip(geometry, shapely.bounds(geometry), strict=True)):
            key, self._next = self._next, self._next + 1
            item = _Item(truth, polygon)
            if confidence is not None and ids is not None:
                item.confidence, item.id = float(confidence[k]), int(ids[k])
            for block in self._blocks_under(bounds).tolist():
                if block not in self._added:
                    item.blocks_left += 1
                    self._waiting.setdefault(block, []).append(key)
            self._items[key] = item
            if item.blocks_left == 0:
                self._ready.add(key)
            keys.append(key)
        return keys

    def add(self, block: Block, predicted: Buildings, pending: np.ndarray,
            truth: BlockVectors | None = None) -> None:
        """Take one block: the predicted buildings it finished, the bounds of the predictions' unfinished
        fragments (`FragmentMerger.pending_bounds()`) and, for a label raster, the block's `BlockVectors` of
        `labels > 0` (polygonize_block)."""
        if (truth is None) != (self._truth_merger is None):
            raise ValueError("a label raster's blocks come with add(..., truth=...); vector labels come with __init__")
        self._added.add(block.index)
        for key in self._waiting.pop(block.index, []):
            item = self._items.get(key)
            if item is not None:
                item.blocks_left -= 1
                if item.blocks_left == 0:
                    self._ready.add(key)
        new = self._register(predicted.geometry, truth=False, confidence=predicted.confidence, ids=predicted.id)
        unfinished = [np.reshape(pending, (-1, 4)) + np.array([-1, -1, 1, 1]) * self.reach]
        if self._truth_merger is not None and truth is not None:
            finished = self._truth_merger.add(truth)
            new += self._register(finished.geometry, truth=True)
            unfinished.append(self._truth_merger.pending_bounds())
        self._link(new)
        bounds = np.concatenate(unfinished)
        self._score_ready(shapely.STRtree(shapely.box(*bounds.T)) if len(bounds) else None)

    def _link(self, keys: list[int]) -> None:
        """Record overlaps (with positive area) between new items and the others not yet scored."""
        if not keys:
            return
        others = [k for k in self._items if k >= len(self._static)]
        tree = shapely.STRtree(geometry_array([self._items[k].geometry for k in others]))
        for key in keys:
            item = self._items[key]
            found = [others[i] for i in tree.query(item.geometry, predicate="intersects").tolist()]
            if len(self._static) and not item.truth:
                found += self._tree.query(item.geometry, predicate="intersects").tolist()
            for other in found:
                partner = self._items.get(other)
                if other == key or partner is None or partner.truth == item.truth:
                    continue
                if other in item.neighbours or shapely.touches(item.geometry, partner.geometry):
                    continue
                item.neighbours.append(other)
                partner.neighbours.append(key)

    def _cluster(self, start: int) -> list[int]:
        seen, queue = {start}, deque([start])
        while queue:
            for other in self._items[queue.popleft()].neighbours:
                if other not in seen and other in self._items:
                    seen.add(other)
                    queue.append(other)
        return sorted(seen)

    def _score_ready(self, blocked: shapely.STRtree | None) -> None:
        visited: set[int] = set()
        for key in sorted(self._ready):
            if key in visited or key not in self._items:
                continue
            cluster = self._cluster(key)
            visited.update(cluster)
            if not all(k in self._ready for k in cluster):
                continue
            if blocked is not None and any(len(blocked.query(self._items[k].geometry)) for k in cluster):
                continue
            self._score(cluster)

    def _score(self, cluster: list[int]) -> None:
        items = [self._items.pop(k) for k in cluster]
        self._ready.difference_update(cluster)
        predictions = [item for item in items if not item.truth]
        truths = [item for item in items if item.truth]
        matches = spacenet_match(geometry_array([p.geometry for p in predictions]),
                                 np.array([p.confidence for p in predictions]), np.array([p.id for p in predictions]),
                                 geometry_array([t.geometry for t in truths]), self.threshold)
        self.counts += ObjectCounts.from_matches(len(truths), len(predictions), [iou for _, _, iou in matches])

    @property
    def held(self) -> int:
        """Buildings held, not scored yet (the true polygons of a vector label file included)."""
        return len(self._items)

    def finish(self) -> ObjectCounts:
        """Score what is left (every block must have been added) and return the mosaic's counts."""
        if len(self._added) != int((self._grid >= 0).sum()):
            raise ValueError(f"{int((self._grid >= 0).sum()) - len(self._added)} block(s) were never added")
        if self._truth_merger is not None:
            self._truth_merger.finish()
        self._ready.update(self._items)
        self._score_ready(None)
        return self.counts

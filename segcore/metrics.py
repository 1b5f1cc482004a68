"""Streaming binary segmentation metrics that merge exactly across batches, workers and raster blocks.

Two accumulators, both plain integer counts so that summing them is the same as computing over the
union of all pixels (never an average of per-batch ratios):
- `ConfusionCounts`: tp/fp/fn/tn at one threshold -> IoU, F1 (Dice), precision, recall, accuracy.
- `ProbabilityHistogram`: per-class histograms of probabilities in fixed bins -> ROC-AUC, PR-AUC and
  the threshold that maximises F1 or IoU.
A pixel is predicted "building" when its probability is >= the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ratio(num: float, den: float) -> float:
    """num / den, 0.0 where den is 0 (a score of nothing)."""
    return float(num) / float(den) if den else 0.0


@dataclass(frozen=True)
class ConfusionCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def from_arrays(cls, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> ConfusionCounts:
        """Counts from boolean prediction and target arrays of one shape; `valid` masks out pixels (nodata)."""
        pred = np.asarray(pred, dtype=bool)
        target = np.asarray(target, dtype=bool)
        if valid is not None:  # masked counts, without copying the valid pixels out
            valid = np.asarray(valid, dtype=bool)
            pred, target, size = pred & valid, target & valid, int(np.count_nonzero(valid))
        else:
            size = int(pred.size)
        tp = int(np.count_nonzero(pred & target))
        fp = int(np.count_nonzero(pred)) - tp
        fn = int(np.count_nonzero(target)) - tp
        return cls(tp, fp, fn, size - tp - fp - fn)

    @classmethod
    def from_sequence(cls, values) -> ConfusionCounts:
        """From (tp, fp, fn, tn), e.g. an all-reduced tensor's `.tolist()`."""
        tp, fp, fn, tn = (int(v) for v in values)
        return cls(tp, fp, fn, tn)

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def iou(self) -> float:
        return ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def f1(self) -> float:
        return ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return ratio(self.tp, self.tp + self.fn)

    @property
    def accuracy(self) -> float:
        return ratio(self.tp + self.tn, self.total)

    def summary(self) -> dict:
        """The derived metrics and the raw counts, as plain JSON-able data."""
        return {
            "iou": self.iou, "f1": self.f1, "precision": self.precision, "recall": self.recall,
            "accuracy": self.accuracy, "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
        }


class ProbabilityHistogram:
    """Counts of positive and negative pixels per probability bin; bins [k/B, (k+1)/B), the last closed."""

    def __init__(self, bins: int = 1000, positives: np.ndarray | None = None, negatives: np.ndarray | None = None):
        self.bins = bins
        self.positives = np.zeros(bins, np.int64) if positives is None else np.asarray(positives, np.int64)
        self.negatives = np.zeros(bins, np.int64) if negatives is None else np.asarray(negatives, np.int64)

    def add(self, probs: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> None:
        probs = np.asarray(probs, dtype=np.float64).ravel()
        target = np.asarray(target, dtype=bool).ravel()
        if valid is not None:
            keep = np.asarray(valid, dtype=bool).ravel()
            probs, target = probs[keep], target[keep]
        index = np.clip((probs * self.bins).astype(np.int64), 0, self.bins - 1)
        self.positives += np.bincount(index[target], minlength=self.bins)
        self.negatives += np.bincount(index[~target], minlength=self.bins)

    def merge(self, other: ProbabilityHistogram) -> ProbabilityHistogram:
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        return ProbabilityHistogram(self.bins, self.positives + other.positives, self.negatives + other.negatives)

    def counts_at(self, threshold: float) -> ConfusionCounts:
        """Confusion counts with `probability >= threshold`, exact when threshold is a bin edge k/bins."""
        k = round(threshold * self.bins)
        tp, fn = int(self.positives[k:].sum()), int(self.positives[:k].sum())
        fp, tn = int(self.negatives[k:].sum()), int(self.negatives[:k].sum())
        return ConfusionCounts(tp, fp, fn, tn)

    def _cumulative(self) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives at each bin-edge threshold, from 1.0 down to 0.0 (bins + 1 points)."""
        tps = np.concatenate([[0], np.cumsum(self.positives[::-1])])
        fps = np.concatenate([[0], np.cumsum(self.negatives[::-1])])
        return tps, fps

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(false positive rate, true positive rate), both increasing from 0 to 1."""
        tps, fps = self._cumulative()
        return fps / max(int(fps[-1]), 1), tps / max(int(tps[-1]), 1)

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(recall, precision) at each threshold from high to low; precision is 1 where nothing is predicted."""
        tps, fps = self._cumulative()
        predicted = tps + fps
        precision = np.where(predicted > 0, tps / np.maximum(predicted, 1), 1.0)
        return tps / max(int(tps[-1]), 1), precision

    def roc_auc(self) -> float:
        fpr, tpr = self.roc_curve()
        return float(np.trapezoid(tpr, fpr))

    def pr_auc(self) -> float:
        """Average precision: precision summed over recall steps (no optimistic interpolation)."""
        recall, precision = self.pr_curve()
        return float(np.sum(np.diff(recall) * precision[1:]))

    def best_threshold(self, metric: str = "f1") -> tuple[float, float]:
        """(threshold, value) maximising "f1" or "iou" over the bin edges."""
        tps, fps = self._cumulative()
        fns = tps[-1] - tps
        if metric == "f1":
            scores = np.where(tps > 0, 2 * tps / np.maximum(2 * tps + fps + fns, 1), 0.0)
        elif metric == "iou":
            scores = np.where(tps > 0, tps / np.maximum(tps + fps + fns, 1), 0.0)
        else:
            raise ValueError(f"metric {metric!r} is not one of 'f1', 'iou'")
        best = int(np.argmax(scores))
        # Point i counts the top i bins, i.e. probability >= (bins - i) / bins.
        return (self.bins - best) / self.bins, float(scores[best])

    def summary(self) -> dict:
        threshold, f1 = self.best_threshold("f1")
        return {"roc_auc": self.roc_auc(), "pr_auc": self.pr_auc(), "best_f1_threshold": threshold, "best_f1": f1}

import numpy as np
import pytest

from segcore.metrics import ConfusionCounts, ProbabilityHistogram


def numpy_reference(pred, target):
    tp, fp = np.sum(pred & target), np.sum(pred & ~target)
    fn, tn = np.sum(~pred & target), np.sum(~pred & ~target)
    return {"iou": tp / (tp + fp + fn), "f1": 2 * tp / (2 * tp + fp + fn), "precision": tp / (tp + fp),
            "recall": tp / (tp + fn), "accuracy": (tp + tn) / pred.size}


def test_counts_match_plain_numpy_on_random_masks():
    rng = np.random.default_rng(0)
    probs, target = rng.random((64, 64)), rng.random((64, 64)) > 0.6
    pred = probs >= 0.45
    counts = ConfusionCounts.from_arrays(pred, target)
    for name, value in numpy_reference(pred, target).items():
        assert getattr(counts, name) == pytest.approx(value)
    assert counts.total == 64 * 64


def test_merged_counts_equal_counts_over_the_union():
    rng = np.random.default_rng(1)
    preds = [rng.random((32, 40)) > 0.5 for _ in range(5)]
    targets = [rng.random((32, 40)) > 0.7 for _ in range(5)]
    merged = ConfusionCounts()
    for p, t in zip(preds, targets, strict=True):
        merged = merged + ConfusionCounts.from_arrays(p, t)
    union = ConfusionCounts.from_arrays(np.concatenate(preds), np.concatenate(targets))
    assert merged == union
    # Averaging per-batch IoU is not the same thing: the merged figure is the union's.
    assert merged.iou == pytest.approx(numpy_reference(np.concatenate(preds), np.concatenate(targets))["iou"])


def test_valid_mask_excludes_pixels():
    pred = np.array([[1, 1], [0, 0]], bool)
    target = np.array([[1, 0], [0, 1]], bool)
    valid = np.array([[1, 1], [1, 0]], bool)
    assert ConfusionCounts.from_arrays(pred, target, valid) == ConfusionCounts(tp=1, fp=1, fn=0, tn=1)


def test_empty_counts_do_not_divide_by_zero():
    assert ConfusionCounts().iou == 0.0 and ConfusionCounts().accuracy == 0.0


def test_histogram_counts_at_threshold_equal_direct_counts():
    rng = np.random.default_rng(2)
    probs, target = rng.random(10_000), rng.random(10_000) > 0.5
    hist = ProbabilityHistogram(bins=100)
    hist.add(probs, target)
    for threshold in (0.1, 0.45, 0.9):
        assert hist.counts_at(threshold) == ConfusionCounts.from_arrays(probs >= threshold, target)


def test_histograms_merge_like_counts():
    rng = np.random.default_rng(3)
    a, b = ProbabilityHistogram(50), ProbabilityHistogram(50)
    pa, ta, pb, tb = rng.random(500), rng.random(500) > 0.5, rng.random(300), rng.random(300) > 0.5
    a.add(pa, ta)
    b.add(pb, tb)
    union = ProbabilityHistogram(50)
    union.add(np.concatenate([pa, pb]), np.concatenate([ta, tb]))
    merged = a.merge(b)
    assert (merged.positives == union.positives).all() and (merged.negatives == union.negatives).all()


def test_auc_of_perfect_random_and_inverted_scores():
    rng = np.random.default_rng(4)
    target = rng.random(20_000) > 0.5
    perfect = ProbabilityHistogram()
    perfect.add(np.where(target, 0.9, 0.1), target)
    random = ProbabilityHistogram()
    random.add(rng.random(20_000), target)
    inverted = ProbabilityHistogram()
    inverted.add(np.where(target, 0.1, 0.9), target)
    assert perfect.roc_auc() == pytest.approx(1.0) and perfect.pr_auc() == pytest.approx(1.0)
    assert random.roc_auc() == pytest.approx(0.5, abs=0.02)
    assert random.pr_auc() == pytest.approx(target.mean(), abs=0.02)
    assert inverted.roc_auc() == pytest.approx(0.0, abs=1e-9)


def test_roc_auc_matches_rank_statistic():
    rng = np.random.default_rng(5)
    target = rng.random(4000) > 0.6
    probs = np.clip(rng.normal(np.where(target, 0.6, 0.4), 0.15), 0, 1)
    hist = ProbabilityHistogram(bins=10_000)
    hist.add(probs, target)
    pos, neg = probs[target], probs[~target]
    mann_whitney = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert hist.roc_auc() == pytest.approx(mann_whitney, abs=2e-3)


def test_best_threshold_maximises_f1_over_a_scan():
    rng = np.random.default_rng(6)
    target = rng.random(5000) > 0.7
    probs = np.clip(rng.normal(np.where(target, 0.7, 0.3), 0.2), 0, 1)
    hist = ProbabilityHistogram(bins=100)
    hist.add(probs, target)
    threshold, best = hist.best_threshold("f1")
    scan = max(ConfusionCounts.from_arrays(probs >= t, target).f1 for t in np.arange(0, 101) / 100)
    assert best == pytest.approx(scan)
    assert ConfusionCounts.from_arrays(probs >= threshold, target).f1 == pytest.approx(best)
    iou_threshold, iou = hist.best_threshold("iou")
    assert ConfusionCounts.from_arrays(probs >= iou_threshold, target).iou == pytest.approx(iou)

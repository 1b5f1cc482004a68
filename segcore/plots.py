"""PNG figures: training curves and ROC/PR curves (matplotlib, headless)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from segcore.metrics import ProbabilityHistogram

CURVES = (("loss", "train_loss", "val_loss"), ("IoU", None, "val_iou"), ("F1", None, "val_f1"),
          ("precision", None, "val_precision"), ("recall", None, "val_recall"), ("learning rate", "lr", None))


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def training_curves_png(history: list[dict]) -> bytes:
    """One panel per quantity against epoch: train in blue, validation in orange."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, train_key, val_key) in zip(axes.flat, CURVES, strict=True):
        if train_key:
            ax.plot(epochs, [row[train_key] for row in history], "o-", label="train" if val_key else train_key)
        if val_key:
            ax.plot(epochs, [row[val_key] for row in history], "o-", label="val")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _png(fig)


def roc_pr_png(hist: ProbabilityHistogram, title: str = "validation") -> bytes:
    """ROC and precision-recall curves with their areas and the F1-maximising threshold."""
    threshold, best_f1 = hist.best_threshold("f1")
    fpr, tpr = hist.roc_curve()
    recall, precision = hist.pr_curve()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 5))
    roc.plot(fpr, tpr)
    roc.plot([0, 1], [0, 1], "--", color="grey")
    roc.set(title=f"ROC ({title}): AUC {hist.roc_auc():.4f}", xlabel="false positive rate", ylabel="true positive rate")
    pr.plot(recall, precision)
    best = hist.counts_at(threshold)
    pr.plot([best.recall], [best.precision], "o", color="red",
            label=f"best F1 {best_f1:.4f} at threshold {threshold:.3f}")
    pr.set(title=f"precision-recall ({title}): AP {hist.pr_auc():.4f}", xlabel="recall", ylabel="precision")
    pr.legend(loc="lower left")
    for ax in (roc, pr):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)

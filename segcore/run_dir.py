"""The files of one training run (local or s3://), each written atomically:

    checkpoints/last.pt   full training state (weights, optimizer, scheduler, progress) for --resume
    checkpoints/best.pt   inference checkpoint of the best validation IoU, with its best-F1 threshold
    metrics.csv, training_curves.png, roc_pr.png (validation at the best epoch), test_metrics.json
"""
from __future__ import annotations

import csv
import io
import json

from segcore.checkpoint import Checkpoint
from segcore.config import S3Config
from segcore.metrics import ProbabilityHistogram
from segcore.plots import roc_pr_png, training_curves_png
from segcore.storage import exists, join, write_bytes


def _metrics_csv(history: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue().encode()


class RunDirectory:
    def __init__(self, path: str, s3: S3Config | None = None):
        self.path, self.s3 = path, s3
        self.last = join(path, "checkpoints", "last.pt")
        self.best = join(path, "checkpoints", "best.pt")

    def holds_a_run(self) -> bool:
        return exists(self.last, self.s3)

    def write(self, name: str, data: bytes) -> None:
        write_bytes(join(self.path, name), data, self.s3)

    def write_epoch(self, last: bytes, history: list[dict], best: Checkpoint | None = None,
                    val_histogram: ProbabilityHistogram | None = None) -> None:
        """After an epoch: last.pt, metrics.csv and the curves; with `best`, best.pt and the ROC/PR figure."""
        write_bytes(self.last, last, self.s3)
        if best is not None:
            best.save(self.best, self.s3)
        if val_histogram is not None:
            self.write("roc_pr.png", roc_pr_png(val_histogram, f"validation, epoch {history[-1]['epoch']}"))
        self.write("metrics.csv", _metrics_csv(history))
        self.write("training_curves.png", training_curves_png(history))

    def write_test_metrics(self, metrics: dict) -> None:
        self.write("test_metrics.json", json.dumps(metrics, indent=2).encode())

"""The Ray-free parts of training: batches to tensors, optimizer and schedulers, one epoch, evaluation,
and the state a run carries from epoch to epoch.

The Ray Train loop in `segcore.pipelines.train` strings these together; they also run alone in tests.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from segcore.config import TrainConfig
from segcore.metrics import ConfusionCounts, ProbabilityHistogram
from segcore.model.inputs import autocast_for, prepare_input

HISTOGRAM_BINS = 1000


def to_model_input(images: np.ndarray, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """N x H x W x 3 uint8 (as stored) -> N x 3 x H x W float in [0, 1] on `device` (`prepare_input`'s rule)."""
    x = torch.from_numpy(np.require(images, requirements=("C", "W"))).to(device, non_blocking=True)
    return prepare_input(x.permute(0, 3, 1, 2), channels_last)


def to_target(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """N x H x W masks (any value > 0 is building) -> N x 1 x H x W float {0, 1}."""
    return (torch.from_numpy(np.require(labels, requirements=("C", "W"))).to(device) > 0).float().unsqueeze(1)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """Per-epoch schedulers: cosine with linear warm-up, step, reduce-on-plateau (on val IoU), or none."""
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.gamma,
                                                          patience=cfg.plateau_patience)
    if cfg.scheduler == "cosine":
        warmup, total = cfg.warmup_epochs, cfg.epochs

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def step_scheduler(scheduler, val_iou: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_iou)
    else:
        scheduler.step()


@dataclass
class EpochStats:
    """Sums, not means, so that workers' stats add up exactly."""

    loss_sum: float = 0.0
    samples: int = 0
    counts: ConfusionCounts = field(default_factory=ConfusionCounts)
    histogram: ProbabilityHistogram = field(default_factory=lambda: ProbabilityHistogram(HISTOGRAM_BINS))

    @property
    def loss(self) -> float:
        return self.loss_sum / self.samples if self.samples else float("nan")

    def to_tensor(self) -> torch.Tensor:
        """Packed as float64 for an all-reduce (exact for counts below 2**53)."""
        c = self.counts
        head = torch.tensor([self.loss_sum, self.samples, c.tp, c.fp, c.fn, c.tn], dtype=torch.float64)
        hist = torch.from_numpy(np.concatenate([self.histogram.positives, self.histogram.negatives])).double()
        return torch.cat([head, hist])

    @classmethod
    def from_tensor(cls, packed: torch.Tensor) -> EpochStats:
        values = packed.cpu().double().numpy()
        counts = ConfusionCounts.from_sequence(np.rint(values[2:6]))
        hist = np.rint(values[6:]).astype(np.int64)
        return cls(float(values[0]), round(values[1]), counts,
                   ProbabilityHistogram(HISTOGRAM_BINS, hist[:HISTOGRAM_BINS], hist[HISTOGRAM_BINS:]))


@dataclass
class Progress:
    """What a run carries from epoch to epoch (saved in last.pt, restored by --resume)."""

    history: list[dict] = field(default_factory=list)  # one row of metrics per epoch
    best_iou: float = -1.0
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs since the best validation IoU
    best_state_dict: dict | None = None  # weights of the best epoch (None in last.pt when it is the last epoch)

    def record(self, row: dict, val_iou: float, state_dict: Callable[[], dict]) -> bool:
        """Add an epoch's row; True when its validation IoU is the best so far (then its weights are kept)."""
        self.history.append(row)
        if val_iou > self.best_iou:
            self.best_iou, self.best_epoch, self.stale_epochs = val_iou, row["epoch"], 0
            self.best_state_dict = state_dict()
            return True
        self.stale_epochs += 1
        return False


@dataclass(frozen=True)
class TrainHooks:
    """Extension points of the training loop, called on every worker (tools and tests observe or perturb a
    run through them, e.g. kill a worker mid-epoch). They must be picklable: module-level functions."""

    on_start: Callable[[nn.Module, int], None] | None = None  # (model before the first step, rank)
    on_batch: Callable[[int, int, int], None] | None = None  # (epoch, batch index, rank) after each step


def train_one_epoch(model: nn.Module, batches: Iterable[dict], loss_fn: nn.Module, optimizer, device: torch.device,
                    cfg: TrainConfig, on_batch: Callable[[int], None] | None = None) -> EpochStats:
    """One pass over `batches` (dicts of uint8 "image" NxHxWx3 and "label" NxHxW); returns the loss sum."""
    model.train()
    channels_last = cfg.channels_last and device.type == "cuda"
    stats = EpochStats()
    for index, batch in enumerate(batches):
        x = to_model_input(batch["image"], device, channels_last)
        y = to_target(batch["label"], device)
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, cfg.precision):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        stats.loss_sum += float(loss.detach()) * len(x)
        stats.samples += len(x)
        if on_batch is not None:
            on_batch(index)
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], loss_fn: nn.Module, device: torch.device,
             cfg: TrainConfig, on_probabilities: Callable[[np.ndarray, np.ndarray], None] | None = None) -> EpochStats:
    """Loss sum, confusion counts at cfg.threshold and the probability histogram over `batches`.

    `on_probabilities(probabilities, target)` sees each batch's arrays (N x 1 x H x W, float and bool)."""
    model.eval()
    channels_last = cfg.channels_last and device.type == "cuda"
    stats = EpochStats()
    for batch in batches:
        x = to_model_input(batch["image"], device, channels_last)
        y = to_target(batch["label"], device)
        with autocast_for(device, cfg.precision):
            logits = model(x)
        logits = logits.float()
        stats.loss_sum += float(loss_fn(logits, y)) * len(x)
        stats.samples += len(x)
        probs = logits.sigmoid().cpu().numpy()
        target = y.cpu().numpy() > 0.5
        stats.counts = stats.counts + ConfusionCounts.from_arrays(probs >= cfg.threshold, target)
        stats.histogram.add(probs, target)
        if on_probabilities is not None:
            on_probabilities(probs, target)
    return stats

"""segcore.training without Ray: input conversion, schedules, the epoch loop, evaluation and what a run carries."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from segcore.config import TrainConfig
from segcore.losses import build_loss
from segcore.training import (
    EpochStats,
    Progress,
    build_optimizer,
    build_scheduler,
    evaluate,
    step_scheduler,
    to_model_input,
    to_target,
    train_one_epoch,
)


class PixelModel(torch.nn.Module):
    """A 1x1 convolution: learns "bright pixels are buildings" in a few steps."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.conv(x)


def bright_squares(count: int, size: int = 16, seed: int = 0) -> list[dict]:
    """Batches of 4 dark images with a bright square each, labelled where the square is (as 255)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        images = rng.integers(0, 60, (4, size, size, 3), dtype=np.uint8)
        labels = np.zeros((4, size, size), np.uint8)
        for n in range(4):
            row, col = rng.integers(0, size - 6, 2)
            images[n, row:row + 6, col:col + 6] = 220
            labels[n, row:row + 6, col:col + 6] = 255
        batches.append({"image": images, "label": labels})
    return batches


def test_inputs_are_divided_by_255_and_labels_above_0_are_building():
    images = np.array([[[[0, 51, 255]]]], np.uint8)  # 1 x 1 x 1 x 3
    x = to_model_input(images, torch.device("cpu"))
    assert x.shape == (1, 3, 1, 1) and torch.allclose(x.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    y = to_target(np.array([[[0, 1, 255]]], np.uint8), torch.device("cpu"))
    assert y.shape == (1, 1, 1, 3) and y.flatten().tolist() == [0.0, 1.0, 1.0]


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(scheduler="cosine", warmup_epochs=2, epochs=6, lr=1.0)
    optimizer = build_optimizer(PixelModel(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    rates = []
    for _ in range(cfg.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        step_scheduler(scheduler, val_iou=0.0)
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(rates[2:])) and rates[-1] < 0.2


def test_an_epoch_learns_and_evaluation_counts_every_pixel():
    torch.manual_seed(0)
    cfg = TrainConfig(lr=0.05, weight_decay=0.0, grad_clip=1.0)
    model, loss_fn, device = PixelModel(), build_loss("bce_dice"), torch.device("cpu")
    optimizer = build_optimizer(model, cfg)
    data, seen = bright_squares(8), []
    before = evaluate(model, data, loss_fn, device, cfg)
    for _ in range(15):
        stats = train_one_epoch(model, data, loss_fn, optimizer, device, cfg, on_batch=seen.append)
    after = evaluate(model, data, loss_fn, device, cfg)
    assert stats.samples == 32 and seen[-8:] == list(range(8))
    assert after.loss < before.loss and after.counts.iou > 0.9
    assert after.counts.total == 32 * 16 * 16 and after.samples == 32
    assert after.histogram.positives.sum() == after.counts.tp + after.counts.fn  # one entry per building pixel


def test_epoch_stats_add_up_through_their_packed_tensor():
    cfg, device = TrainConfig(), torch.device("cpu")
    model, loss_fn = PixelModel(), build_loss("bce")
    halves = [evaluate(model, part, loss_fn, device, cfg) for part in (bright_squares(2, seed=1),
                                                                        bright_squares(3, seed=2))]
    whole = evaluate(model, bright_squares(2, seed=1) + bright_squares(3, seed=2), loss_fn, device, cfg)
    summed = EpochStats.from_tensor(halves[0].to_tensor() + halves[1].to_tensor())
    assert summed.counts == whole.counts and summed.samples == whole.samples == 20
    assert summed.loss == pytest.approx(whole.loss, rel=1e-6)
    assert np.array_equal(summed.histogram.positives, whole.histogram.positives)


def test_progress_keeps_the_best_epochs_weights_and_counts_stale_epochs():
    progress = Progress()
    assert progress.record({"epoch": 1}, 0.3, lambda: {"w": 1}) is True
    assert progress.record({"epoch": 2}, 0.2, lambda: {"w": 2}) is False
    assert progress.record({"epoch": 3}, 0.5, lambda: {"w": 3}) is True
    assert progress.record({"epoch": 4}, 0.5, lambda: {"w": 4}) is False  # not better: the earlier one stays
    assert (progress.best_epoch, progress.best_iou, progress.stale_epochs) == (3, 0.5, 1)
    assert progress.best_state_dict == {"w": 3} and [row["epoch"] for row in progress.history] == [1, 2, 3, 4]

"""Training on Ray Train with 2 CPU workers (gloo) on a small generated patch set (the session's `trained_run`)."""
import csv
import functools
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segcore.checkpoint import read_checkpoint
from segcore.errors import InputError
from segcore.training import TrainHooks
from tests.helpers import TILE, small_config
from tests.inputs import write_patch_set


def read_history(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_two_workers_write_every_output(trained_run):
    trained = trained_run.run_dir
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.csv", "training_curves.png", "roc_pr.png",
                 "test_metrics.json"):
        assert (trained / name).stat().st_size > 0, name
    history = read_history(trained)
    assert [int(r["epoch"]) for r in history] == [1, 2]
    for key in ("train_loss", "val_loss", "val_iou", "val_f1", "val_precision", "val_recall", "val_accuracy",
                "lr", "epoch_seconds", "samples_per_s"):
        assert np.isfinite(float(history[0][key])), key
    best = read_checkpoint(str(trained / "checkpoints" / "best.pt")).checkpoint  # weights_only=True inside
    assert best.threshold == 0.45 and 0 < best.best_f1_threshold <= 1 and best.tile_size == TILE
    assert best.model.backbone == "resnet18" and best.input.bands == [1, 2, 3]
    last = read_checkpoint(str(trained / "checkpoints" / "last.pt")).checkpoint
    assert last.training.optimizer["state"], "optimizer state is saved for resume"
    test_metrics = json.loads((trained / "test_metrics.json").read_text())
    assert test_metrics["samples"] == 8 and 0 <= test_metrics["iou"] <= 1


def test_a_rerun_with_the_same_seed_trains_the_same_model(trained_run, tmp_path):
    """Same patches, config and seed: the same batches, augmentations and weights, whichever processes read
    the patches (validation loss may differ in its last digits: workers sum unequal shares of it)."""
    from segcore.pipelines.train import run_training

    run_training(small_config(trained_run.data_root, tmp_path / "run", "train.epochs=2",
                              f"s3.endpoint_url={trained_run.endpoint}"))
    first, again = read_history(trained_run.run_dir), read_history(tmp_path / "run")
    exact = ("train_loss", "val_iou", "val_f1", "val_precision", "val_recall", "lr")
    assert [[row[key] for key in exact] for row in again] == [[row[key] for key in exact] for row in first]
    assert [float(row["val_loss"]) for row in again] == pytest.approx([float(row["val_loss"]) for row in first])
    weights = [read_checkpoint(str(run / "checkpoints" / "last.pt")).checkpoint.state_dict
               for run in (trained_run.run_dir, tmp_path / "run")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_epoch_shards_are_equal_disjoint_reproducible_and_reshuffled_each_epoch(patch_set, ray_local, tmp_path):
    from segcore.data.patches import list_pairs
    from segcore.pipelines.raytrain import epoch_shard

    cfg = small_config(patch_set, tmp_path / "run")
    pairs = list_pairs(str(patch_set), "train")[:23]  # 23 patches: one sits each epoch out with 2 workers

    def shard(epoch: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
        batches = list(epoch_shard(pairs, cfg, epoch, rank, 2).iter_batches(batch_size=4, batch_format="numpy"))
        return np.concatenate([b["image"] for b in batches]), np.concatenate([b["label"] for b in batches])

    first = [shard(1, rank) for rank in (0, 1)]
    assert [len(labels) for _, labels in first] == [11, 11]
    again = shard(1, 1)
    assert np.array_equal(first[1][0], again[0]) and np.array_equal(first[1][1], again[1])
    assert not any(np.array_equal(a, b) for a in first[0][0] for b in first[1][0])  # no patch on both workers
    assert not np.array_equal(first[0][0], shard(2, 0)[0])  # another order (and other augmentations) in epoch 2


def kill_rank_1_once(marker: str, at_epoch: int, epoch: int, batch: int, rank: int) -> None:
    """A TrainHooks.on_batch: worker rank 1 exits abruptly after batch 1 of `at_epoch`, the first time only."""
    if (epoch, batch, rank) == (at_epoch, 1, 1) and not Path(marker).exists():
        Path(marker).write_text(f"worker {rank} killed at epoch {epoch}\n")
        os._exit(1)


def test_resume_continues_the_run_and_a_killed_worker_is_restored_from_the_last_checkpoint(
        trained_run, tmp_path, capfd):
    """Resumed to 4 epochs; a worker dies in epoch 4, after Ray holds epoch 3's checkpoint of this run, and
    the restarted workers continue from it (optimizer, scheduler and history restored)."""
    from segcore.pipelines.train import run_training

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run_dir)
    cfg = small_config(trained_run.data_root, run_dir, "train.epochs=4", "train.max_failures=2",
                       f"s3.endpoint_url={trained_run.endpoint}")
    hooks = TrainHooks(on_batch=functools.partial(kill_rank_1_once, str(tmp_path / "fault_injected"), 4))
    resumed = run_training(cfg, resume=str(run_dir), hooks=hooks)
    assert (tmp_path / "fault_injected").exists(), "the fault hook did not fire"
    assert resumed["epoch"] == 4
    assert "restarted after a worker failure: continuing from the checkpoint of epoch 3" in capfd.readouterr().out
    history = read_history(run_dir)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    losses = [float(r["train_loss"]) for r in history]
    assert losses[-1] < losses[0], f"training did not lower the loss: {losses}"


def test_validation_figures_of_one_and_two_workers_agree_exactly(trained_run, patch_set, tmp_path):
    """Sums of confusion counts over workers: every patch is scored once, whatever the worker count."""
    from segcore.pipelines.evaluate import run_evaluation

    best = str(trained_run.run_dir / "checkpoints" / "best.pt")
    one = run_evaluation(small_config(patch_set, tmp_path / "e1", "train.num_workers=1"), best, str(patch_set), "val")
    two = run_evaluation(small_config(patch_set, tmp_path / "e2", "train.num_workers=2"), best, str(patch_set), "val")
    assert one["samples"] == two["samples"] == 8
    assert (one["tp"], one["fp"], one["fn"], one["tn"]) == (two["tp"], two["fp"], two["fn"], two["tn"])
    assert one["tp"] + one["fp"] + one["fn"] + one["tn"] == 8 * TILE * TILE


def test_refuses_to_overwrite_a_run_without_resume(patch_set, tmp_path):
    from segcore.pipelines.train import run_training

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({}, tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(InputError, match="--resume"):
        run_training(small_config(patch_set, tmp_path / "run"))


@pytest.mark.parametrize("breakage, words", [
    ("missing_split", ["val/images", "missing"]),
    ("lonely_label", ["p000", "no file with the same stem"]),
    ("wrong_size", ["p001.png", "expected 64x64"]),
    ("not_an_image", ["p002.png", "not a readable image"]),
])
def test_bad_datasets_fail_in_one_line_before_workers_start(tmp_path, breakage, words):
    from segcore.pipelines.train import run_training

    root = write_patch_set(tmp_path / "data", counts=(("train", 4), ("val", 3)))
    if breakage == "missing_split":
        for f in (root / "val" / "images").iterdir():
            f.unlink()
        (root / "val" / "images").rmdir()
    elif breakage == "lonely_label":
        (root / "train" / "images" / "p000.png").unlink()
    elif breakage == "wrong_size":
        cv2.imwrite(str(root / "train" / "images" / "p001.png"), np.zeros((32, 64, 3), np.uint8))
    else:
        (root / "train" / "images" / "p002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage bytes here")
    with pytest.raises(InputError) as err:
        run_training(small_config(root, tmp_path / "run"))
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)

"""Distributed training and evaluation on Ray Train (DDP), fed by Ray Data from the patch layout.

Driver: check the dataset (one clear line before any worker starts), build Ray Datasets of patch
paths that decode (and, for train, augment) on CPU tasks, run a `TorchTrainer`. Workers: the loop in
`_train_loop`, built from the Ray-free pieces in `segcore.training`. Rank 0 writes the run directory:
    checkpoints/last.pt  full training state (weights, optimizer, scheduler, history) for --resume
    checkpoints/best.pt  inference checkpoint of the best validation IoU, with its best-F1 threshold
    metrics.csv, training_curves.png, roc_pr.png, test_metrics.json (when a test split exists)
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import os
import struct
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from segcore.checkpoint import FORMAT, check_weights, read_checkpoint, save_checkpoint
from segcore.config import Config, config_from_dict
from segcore.data.patches import SPLITS, decode_image, decode_label, list_pairs
from segcore.data.transforms import build_augment
from segcore.errors import InputError
from segcore.losses import build_loss
from segcore.model import build_model
from segcore.plots import roc_pr_png, training_curves_png
from segcore.storage import exists, filesystem, is_s3, join, write_bytes
from segcore.training import (EpochStats, build_optimizer, build_scheduler, evaluate, step_scheduler,
                              train_one_epoch)

STATE_FILE = "state.pt"  # inside Ray's checkpoint directories
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- driver-side checks and datasets

def _patch_size(fs, path: str) -> tuple[int, int]:
    """(height, width) of a patch: from the PNG header when it is one (24 bytes), else by decoding."""
    head = fs.cat_file(path, start=0, end=24)
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    return decode_image(fs.cat_file(path), path).shape[:2]


def check_split(root: str, split: str, tile_size: int, cfg: Config) -> list[tuple[str, str]]:
    """Pairs of one split, after checking every image and label is tile_size x tile_size."""
    pairs = list_pairs(root, split, cfg.s3)
    fs = filesystem(root, cfg.s3)
    paths = [p for pair in pairs for p in pair]
    with ThreadPoolExecutor(16) as pool:
        sizes = list(pool.map(lambda p: _patch_size(fs, p), paths))
    for path, size in zip(paths, sizes):
        if size != (tile_size, tile_size):
            raise InputError(f"{path}: patch is {size[1]}x{size[0]}, expected {tile_size}x{tile_size} "
                             "(train.tile_size)")
    return pairs


def _read_patches(batch: dict, s3: dict, augment: dict | None) -> dict:
    """Ray Data map_batches function: paths -> uint8 images N x H x W x 3 and masks N x H x W {0,1}."""
    s3_cfg = config_from_dict({"s3": s3}).s3
    fs = filesystem(str(batch["image"][0]), s3_cfg)
    images = [decode_image(fs.cat_file(p), p) for p in batch["image"]]
    labels = [decode_label(fs.cat_file(p), p) for p in batch["label"]]
    if augment is not None:
        transform = build_augment(config_from_dict({"train": {"augment": augment}}).train.augment)
        pairs = [transform(image=image, mask=label) for image, label in zip(images, labels)]
        images, labels = [p["image"] for p in pairs], [p["mask"] for p in pairs]
    return {"image": np.stack(images), "label": np.stack(labels)}


def build_dataset(pairs: list[tuple[str, str]], cfg: Config, augment: bool) -> ray.data.Dataset:
    items = [{"image": image, "label": label} for image, label in pairs]
    augment_cfg = dataclasses.asdict(cfg.train.augment) if augment else None
    return ray.data.from_items(items).map_batches(
        _read_patches, batch_size=16, batch_format="numpy",
        fn_kwargs={"s3": dataclasses.asdict(cfg.s3), "augment": augment_cfg})


class _ExactEvalSplit(DataConfig):
    """Train is split equally (DDP steps stay in lock-step); val/test unequally, so no row is ever dropped
    and metrics summed over workers equal metrics over the whole split, whatever the worker count."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = super().configure({"train": datasets["train"]} if "train" in datasets else {},
                                   world_size, worker_handles, worker_node_ids, **kwargs)
        for name, dataset in datasets.items():
            if name == "train":
                continue
            dataset = dataset.copy(dataset)
            dataset.set_name(name)
            dataset.context.execution_options = self._resolve_execution_options(name)
            for rank, split in enumerate(dataset.streaming_split(world_size, equal=False)):
                output[rank][name] = split
        return output


# ---------------------------------------------------------------- worker side

def _all_reduce(stats: EpochStats, device: torch.device) -> EpochStats:
    packed = stats.to_tensor()
    if dist.is_available() and dist.is_initialized():
        # gloo reduces CPU tensors; NCCL needs them on the GPU.
        packed = packed.to(device) if device.type == "cuda" else packed
        dist.all_reduce(packed)
    return EpochStats.from_tensor(packed)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}


def _restore_state(resume_from: str | None, cfg: Config) -> dict | None:
    """Ray's latest checkpoint after a worker failure, else the --resume run's last.pt, else None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            return read_checkpoint(os.path.join(directory, STATE_FILE))
    if resume_from:
        return read_checkpoint(resume_from, cfg.s3)
    return None


def _metrics_csv(history: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue().encode()


def _inference_payload(cfg: Config, state_dict: dict, epoch: int, row: dict, val: EpochStats) -> dict:
    best_threshold, _ = val.histogram.best_threshold("f1")
    return {"model": dataclasses.asdict(cfg.model), "input": dataclasses.asdict(cfg.input),
            "threshold": cfg.train.threshold, "best_f1_threshold": best_threshold, "epoch": epoch,
            "metrics": row, "state_dict": state_dict,
            "val_histogram": {"positives": torch.from_numpy(val.histogram.positives),
                              "negatives": torch.from_numpy(val.histogram.negatives)}}


def _maybe_inject_fault(cfg: Config, epoch: int, rank: int) -> None:
    """Test-only: worker rank 1 dies abruptly once, at train.fault_epoch, to exercise Ray's recovery."""
    if cfg.train.fault_epoch != epoch or rank != 1:
        return
    marker = Path(cfg.train.run_dir) / ".fault_injected"
    if not marker.exists():
        marker.write_text(f"worker {rank} killed at epoch {epoch}\n")
        os._exit(1)


def _train_loop(config: dict) -> None:
    cfg = config_from_dict(config["cfg"])
    t = cfg.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    torch.manual_seed(t.seed)
    model = build_model(**dataclasses.asdict(cfg.model))
    state = _restore_state(config.get("resume_from"), cfg)
    if state is not None:
        model.load_state_dict(state["state_dict"])
    if t.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    loss_fn = build_loss(t.loss, t.loss_weight)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t)
    progress = {"history": [], "best_iou": -1.0, "best_epoch": 0, "stale_epochs": 0, "best_state_dict": None}
    start = 1
    if state is not None:
        optimizer.load_state_dict(state["training"]["optimizer"])
        scheduler.load_state_dict(state["training"]["scheduler"])
        progress = {k: state["training"][k] for k in progress}
        if progress["best_state_dict"] is None and progress["best_epoch"] == state["epoch"]:
            progress["best_state_dict"] = state["state_dict"]
        start = state["epoch"] + 1
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    for epoch in range(start, t.epochs + 1):
        began = time.perf_counter()
        batches = train_shard.iter_batches(batch_size=t.batch_size, batch_format="numpy",
                                           local_shuffle_buffer_size=4 * t.batch_size,
                                           local_shuffle_seed=t.seed * 100_003 + epoch * 101 + rank)
        on_batch = (lambda i: _maybe_inject_fault(cfg, epoch, rank) if i == 1 else None)
        train_stats = _all_reduce(train_one_epoch(model, batches, loss_fn, optimizer, device, t, on_batch), device)
        train_seconds = time.perf_counter() - began
        # Evaluate the bare module: DDP's forward broadcasts buffers, a collective that would hang when
        # workers hold different numbers of validation batches (the eval split is unequal on purpose).
        val = _all_reduce(evaluate(_unwrap(model), val_shard.iter_batches(batch_size=t.batch_size, batch_format="numpy"),
                                   loss_fn, device, t), device)
        lr = optimizer.param_groups[0]["lr"]
        step_scheduler(scheduler, val.counts.iou)
        row = {"epoch": epoch, "train_loss": train_stats.loss, "val_loss": val.loss,
               **{f"val_{k}": v for k, v in val.counts.summary().items() if k in
                  ("iou", "f1", "precision", "recall", "accuracy")},
               "val_roc_auc": val.histogram.roc_auc(), "lr": lr,
               "epoch_seconds": time.perf_counter() - began,
               "samples_per_s": train_stats.samples / max(train_seconds, 1e-9), "workers": world}
        progress["history"].append(row)
        improved = val.counts.iou > progress["best_iou"]
        if improved:
            progress.update(best_iou=val.counts.iou, best_epoch=epoch, stale_epochs=0,
                            best_state_dict=_cpu_state(model))
        else:
            progress["stale_epochs"] += 1
        stop = bool(t.early_stop_patience and progress["stale_epochs"] >= t.early_stop_patience)
        _report(cfg, model, optimizer, scheduler, epoch, row, progress, val if improved else None, rank)
        if stop:
            if rank == 0:
                print(f"early stop at epoch {epoch}: no better val IoU for {t.early_stop_patience} epochs", flush=True)
            break
    if "test" in config["splits"] and progress["best_state_dict"] is not None:
        _unwrap(model).load_state_dict(progress["best_state_dict"])
        test = _all_reduce(evaluate(_unwrap(model), ray.train.get_dataset_shard("test").iter_batches(
            batch_size=t.batch_size, batch_format="numpy"), loss_fn, device, t), device)
        if rank == 0:
            result = {"split": "test", "epoch": progress["best_epoch"], "threshold": t.threshold,
                      "loss": test.loss, "samples": test.samples, **test.counts.summary(), **test.histogram.summary()}
            write_bytes(join(t.run_dir, "test_metrics.json"), json.dumps(result, indent=2).encode(), cfg.s3)
            print(f"test: IoU {test.counts.iou:.4f}  F1 {test.counts.f1:.4f}  ({test.samples} patches)", flush=True)


def _report(cfg: Config, model, optimizer, scheduler, epoch: int, row: dict, progress: dict,
            improved_val: EpochStats | None, rank: int) -> None:
    """Rank 0 writes the run directory and hands Ray the full state; every rank calls report."""
    t = cfg.train
    if rank != 0:
        ray.train.report(row)
        return
    full = {"format": FORMAT, "model": dataclasses.asdict(cfg.model), "input": dataclasses.asdict(cfg.input),
            "threshold": t.threshold, "best_f1_threshold": None, "epoch": epoch, "metrics": row,
            "state_dict": _cpu_state(model),
            "training": {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "config": cfg.to_dict(), **progress}}
    if progress["best_epoch"] == epoch:  # the best weights are the current ones: store them once
        full["training"]["best_state_dict"] = None
    buffer = io.BytesIO()
    torch.save(full, buffer)
    write_bytes(join(t.run_dir, "checkpoints", "last.pt"), buffer.getvalue(), cfg.s3)
    if improved_val is not None:
        save_checkpoint(join(t.run_dir, "checkpoints", "best.pt"),
                        _inference_payload(cfg, progress["best_state_dict"], epoch, row, improved_val), cfg.s3)
        write_bytes(join(t.run_dir, "roc_pr.png"), roc_pr_png(improved_val.histogram, f"validation, epoch {epoch}"),
                    cfg.s3)
    write_bytes(join(t.run_dir, "metrics.csv"), _metrics_csv(progress["history"]), cfg.s3)
    write_bytes(join(t.run_dir, "training_curves.png"), training_curves_png(progress["history"]), cfg.s3)
    print(f"epoch {epoch}/{t.epochs}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
          f"IoU {row['val_iou']:.4f}  F1 {row['val_f1']:.4f}  P {row['val_precision']:.3f}  "
          f"R {row['val_recall']:.3f}  lr {row['lr']:.2e}  {row['epoch_seconds']:.0f}s  "
          f"{row['samples_per_s']:.1f} samples/s{'  *best' if improved_val is not None else ''}", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, STATE_FILE), "wb") as handle:
            handle.write(buffer.getvalue())
        ray.train.report(row, checkpoint=Checkpoint.from_directory(directory))


# ---------------------------------------------------------------- driver

def _ray_storage(run_dir: str, cfg: Config) -> dict:
    """RunConfig storage arguments for a local or s3:// run directory (custom S3 endpoints included)."""
    if not is_s3(run_dir):
        return {"storage_path": str(Path(run_dir).resolve())}
    import pyarrow.fs

    kwargs = {"endpoint_override": cfg.s3.endpoint_url} if cfg.s3.endpoint_url else {}
    if cfg.s3.endpoint_url and cfg.s3.endpoint_url.startswith("http://"):
        kwargs["scheme"] = "http"
    if cfg.s3.region:
        kwargs["region"] = cfg.s3.region
    return {"storage_path": run_dir[len("s3://"):], "storage_filesystem": pyarrow.fs.S3FileSystem(**kwargs)}


def _init_ray() -> None:
    """Connect to the running cluster (ray job submit, RAY_ADDRESS) or start a local Ray, unless a caller
    already did. Called after the input checks, so that bad input costs no Ray start."""
    if not ray.is_initialized():
        ray.init()


def _trainer(loop, loop_config: dict, cfg: Config, datasets: dict, name: str) -> TorchTrainer:
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}
    return TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1), **_ray_storage(t.run_dir, cfg)),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        datasets=datasets, dataset_config=_ExactEvalSplit())


def run_training(cfg: Config, resume: str | None = None) -> dict:
    """Train; returns the final reported metrics. `resume` is a run directory to continue from."""
    t = cfg.train
    if resume:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, run_dir=resume))
        t = cfg.train
        resume_from = join(resume, "checkpoints", "last.pt")
        if not exists(resume_from, cfg.s3):
            raise InputError(f"{resume_from}: does not exist (nothing to resume in {resume})")
        # Checked here, not first in the workers: a bad file is one line before any worker starts.
        state = read_checkpoint(resume_from, cfg.s3)
        if not isinstance(state, dict) or state.get("format") != FORMAT or "training" not in state:
            raise InputError(f"{resume_from}: not a segcore training checkpoint (last.pt with the training state)")
        check_weights(resume_from, cfg.model, state.get("state_dict"))
        del state  # the workers load it themselves
    else:
        resume_from = None
        if exists(join(t.run_dir, "checkpoints", "last.pt"), cfg.s3):
            raise InputError(f"{t.run_dir}: already holds a run; pass --resume {t.run_dir} to continue it, "
                             "or set train.run_dir to a new directory")
    if not t.data_root:
        raise InputError("train.data_root is not set: pass --set train.data_root=ROOT (ROOT/{train,val}/{images,labels})")
    pairs = {split: check_split(t.data_root, split, t.tile_size, cfg) for split in ("train", "val")}
    if exists(join(t.data_root, "test"), cfg.s3):
        pairs["test"] = check_split(t.data_root, "test", t.tile_size, cfg)
    if len(pairs["train"]) < t.num_workers:
        raise InputError(f"{t.data_root}: {len(pairs['train'])} training patches for {t.num_workers} workers")
    _init_ray()
    datasets = {split: build_dataset(p, cfg, augment=(split == "train")) for split, p in pairs.items()}
    print(f"training on {', '.join(f'{len(p)} {s}' for s, p in pairs.items())} patches with {t.num_workers} "
          f"{'GPU' if t.use_gpu else 'CPU'} worker(s); run directory {t.run_dir}", flush=True)
    loop_config = {"cfg": cfg.to_dict(), "resume_from": resume_from, "splits": sorted(pairs)}
    result = _trainer(_train_loop, loop_config, cfg, datasets, f"ray-train-{time.strftime('%Y%m%d-%H%M%S')}").fit()
    return dict(result.metrics or {})


def _evaluate_loop(config: dict) -> None:
    cfg = config_from_dict(config["cfg"])
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    model = build_model(**dataclasses.asdict(cfg.model))
    model.load_state_dict(read_checkpoint(config["checkpoint"], cfg.s3)["state_dict"])
    model = model.to(device)
    stats = _all_reduce(evaluate(model, ray.train.get_dataset_shard(config["split"]).iter_batches(
        batch_size=cfg.train.batch_size, batch_format="numpy"), build_loss(cfg.train.loss, cfg.train.loss_weight),
        device, cfg.train), device)
    metrics = {"split": config["split"], "threshold": cfg.train.threshold, "loss": stats.loss,
               "samples": stats.samples, **stats.counts.summary(), **stats.histogram.summary()}
    # Ray Train returns the metrics reported with the last checkpoint, so rank 0 attaches a tiny one.
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "metrics.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


def run_evaluation(cfg: Config, checkpoint: str, data_root: str, split: str = "test",
                   threshold: float | None = None) -> dict:
    """Metrics of a segcore checkpoint on one split, computed by cfg.train.num_workers workers.

    The model, normalization and (unless `threshold` is given) the threshold come from the checkpoint.
    """
    if split not in SPLITS:
        raise InputError(f"split {split!r} is unknown: expected one of {', '.join(SPLITS)}")
    if threshold is not None and not 0 < threshold < 1:
        raise InputError(f"threshold {threshold!r}: expected a probability in (0, 1)")
    stored = read_checkpoint(checkpoint, cfg.s3)
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        raise InputError(f"{checkpoint}: not a segcore checkpoint (train one with jobs/train.py)")
    cfg = copy.deepcopy(cfg)
    cfg.model = config_from_dict({"model": dict(stored["model"], pretrained=False)}).model
    check_weights(checkpoint, cfg.model, stored.get("state_dict"))  # on the driver: one line, no workers
    cfg.input = config_from_dict({"input": stored["input"]}).input
    cfg.train.threshold = float(stored["threshold"]) if threshold is None else threshold
    pairs = check_split(data_root, split, cfg.train.tile_size, cfg)
    _init_ray()
    loop_config = {"cfg": cfg.to_dict(), "checkpoint": checkpoint, "split": split}
    with tempfile.TemporaryDirectory() as scratch:  # Ray's run storage; evaluation writes no checkpoints
        cfg.train.run_dir = scratch
        datasets = {split: build_dataset(pairs, cfg, augment=False)}
        result = _trainer(_evaluate_loop, loop_config, cfg, datasets, "ray-evaluate").fit()
    return dict(result.metrics or {})

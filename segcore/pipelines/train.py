"""Distributed training on Ray Train (DDP), fed by Ray Data from the patch layout.

Driver (`run_training`): check the run directory, the weights to start from (`--resume` or
`train.init_from`) and the dataset, each failing in one line before any worker starts; then run a
`TorchTrainer`. Workers (`train_loop`): the Ray-free pieces of `segcore.training`, one epoch after the
other; rank 0 writes the run directory (`segcore.run_dir`) and hands Ray the full state, from which Ray
restores the workers after a failure.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable

import ray
import ray.train
import torch
from ray.train import Checkpoint as RayCheckpoint

from segcore.checkpoint import (
    Checkpoint,
    LoadedCheckpoint,
    TrainingState,
    load_weights,
    read_checkpoint,
)
from segcore.config import Config, config_from_dict, load_config
from segcore.data.patches import training_gsd
from segcore.errors import InputError
from segcore.losses import build_loss
from segcore.model import build_model
from segcore.pipelines import init_ray
from segcore.pipelines.raytrain import (
    all_reduce,
    check_split,
    epoch_shard,
    make_trainer,
    patch_dataset,
    unwrap,
    worker_setup,
)
from segcore.run_dir import RunDirectory
from segcore.storage import absolute, exists, join
from segcore.training import (
    EpochStats,
    Progress,
    TrainHooks,
    build_optimizer,
    build_scheduler,
    evaluate,
    step_scheduler,
    train_one_epoch,
)

STATE_FILE = "state.pt"  # last.pt's bytes inside Ray's checkpoint directories


# ---------------------------------------------------------------- worker side

def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def _restore(resume_from: str | None, cfg: Config) -> Checkpoint | None:
    """Ray's latest checkpoint after a worker failure, else the --resume run's last.pt, else None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = read_checkpoint(os.path.join(directory, STATE_FILE)).checkpoint
        if state is not None and state.training and ray.train.get_context().get_world_rank() == 0:
            print("restarted after a worker failure: continuing from the checkpoint of epoch "
                  f"{len(state.training.progress['history'])}", flush=True)
        return state
    return read_checkpoint(resume_from, cfg.s3).checkpoint if resume_from else None


def _epoch_row(epoch: int, train: EpochStats, val: EpochStats, lr: float, began: float, train_seconds: float,
               world: int) -> dict:
    summary = val.counts.summary()
    return {"epoch": epoch, "train_loss": train.loss, "val_loss": val.loss,
            **{f"val_{k}": summary[k] for k in ("iou", "f1", "precision", "recall", "accuracy")},
            "val_roc_auc": val.histogram.roc_auc(), "lr": lr, "epoch_seconds": time.perf_counter() - began,
            "samples_per_s": train.samples / max(train_seconds, 1e-9), "workers": world}


def train_loop(config: dict) -> None:
    """One worker's training (Ray Train runs it through `train_entry.train_worker`)."""
    cfg = config_from_dict(config["cfg"])
    t, hooks = cfg.train, config["hooks"] or TrainHooks()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = worker_setup(cfg)
    torch.manual_seed(t.seed)
    model: torch.nn.Module = build_model(**dataclasses.asdict(cfg.model))
    state = _restore(config["resume_from"], cfg)
    if state is not None:
        model.load_state_dict(state.state_dict)
    elif config["init_weights"] is not None:  # checked on the driver: these keys fit this model
        model.load_state_dict(ray.get(config["init_weights"]), strict=True)
    if hooks.on_start:
        hooks.on_start(model, rank)
    if t.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    loss_fn = build_loss(t.loss, t.loss_weight)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t)
    progress, start = Progress(), 1
    if state is not None and state.training is not None:
        optimizer.load_state_dict(state.training.optimizer)
        scheduler.load_state_dict(state.training.scheduler)
        progress = Progress(**state.training.progress)
        if progress.best_state_dict is None and progress.best_epoch == state.epoch:
            progress.best_state_dict = state.state_dict
        start = state.epoch + 1
    train_pairs, val_shard = ray.get(config["train_pairs"]), ray.train.get_dataset_shard("val")
    for epoch in range(start, t.epochs + 1):
        began = time.perf_counter()
        shard = epoch_shard(train_pairs, cfg, epoch, rank, world)
        batches = shard.iter_batches(batch_size=t.batch_size, batch_format="numpy")
        on_batch = _batch_hook(hooks, epoch, rank)
        train_stats = all_reduce(train_one_epoch(model, batches, loss_fn, optimizer, device, t, on_batch), device)
        train_seconds = time.perf_counter() - began
        # Evaluate the bare module: DDP's forward broadcasts buffers, a collective that would hang when
        # workers hold different numbers of validation batches (the eval split is unequal on purpose).
        val = all_reduce(evaluate(unwrap(model), val_shard.iter_batches(batch_size=t.batch_size, batch_format="numpy"),
                                  loss_fn, device, t), device)
        lr = optimizer.param_groups[0]["lr"]
        step_scheduler(scheduler, val.counts.iou)
        row = _epoch_row(epoch, train_stats, val, lr, began, train_seconds, world)
        improved = progress.record(row, val.counts.iou, lambda: _cpu_state(model))
        _report(cfg, model, optimizer, scheduler, row, progress, val if improved else None, rank, config["gsd_m"])
        if t.early_stop_patience and progress.stale_epochs >= t.early_stop_patience:
            if rank == 0:
                print(f"early stop at epoch {epoch}: no better val IoU for {t.early_stop_patience} epochs", flush=True)
            break
    if "test" in config["splits"] and progress.best_state_dict is not None:
        _test(cfg, model, progress.best_epoch, progress.best_state_dict, loss_fn, device, rank)


def _batch_hook(hooks: TrainHooks, epoch: int, rank: int) -> Callable[[int], None] | None:
    hook = hooks.on_batch
    return None if hook is None else (lambda index: hook(epoch, index, rank))


def _test(cfg: Config, model: torch.nn.Module, best_epoch: int, best_state_dict: dict, loss_fn,
          device: torch.device, rank: int) -> None:
    """The best epoch's weights on the test split; rank 0 writes test_metrics.json."""
    unwrap(model).load_state_dict(best_state_dict)
    batches = ray.train.get_dataset_shard("test").iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy")
    test = all_reduce(evaluate(unwrap(model), batches, loss_fn, device, cfg.train), device)
    if rank == 0:
        result = {"split": "test", "epoch": best_epoch, "threshold": cfg.train.threshold, "loss": test.loss,
                  "samples": test.samples, **test.counts.summary(), **test.histogram.summary()}
        RunDirectory(cfg.train.run_dir, cfg.s3).write_test_metrics(result)
        print(f"test: IoU {test.counts.iou:.4f}  F1 {test.counts.f1:.4f}  ({test.samples} patches)", flush=True)


def _report(cfg: Config, model, optimizer, scheduler, row: dict, progress: Progress,
            improved_val: EpochStats | None, rank: int, gsd_m: float | None) -> None:
    """Rank 0 writes the run directory and hands Ray the full state; every rank calls report."""
    if rank != 0:
        ray.train.report(row)
        return
    t, epoch = cfg.train, row["epoch"]
    saved = dataclasses.replace(progress, best_state_dict=None if progress.best_epoch == epoch
                                else progress.best_state_dict)  # the best weights are the current ones: once
    common = dict(model=cfg.model, input=cfg.input, threshold=t.threshold, tile_size=t.tile_size, gsd_m=gsd_m,
                  epoch=epoch, metrics=row)
    last = Checkpoint(state_dict=_cpu_state(model), **common, training=TrainingState(
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), config=cfg.to_dict(),
        progress=vars(saved))).to_bytes()
    best = None
    if improved_val is not None and progress.best_state_dict is not None:
        histogram = improved_val.histogram
        best = Checkpoint(state_dict=progress.best_state_dict, **common,
                          best_f1_threshold=histogram.best_threshold("f1")[0],
                          val_histogram={"positives": torch.from_numpy(histogram.positives),
                                         "negatives": torch.from_numpy(histogram.negatives)})
    RunDirectory(t.run_dir, cfg.s3).write_epoch(last, progress.history, best,
                                                improved_val.histogram if improved_val else None)
    print(f"epoch {epoch}/{t.epochs}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
          f"IoU {row['val_iou']:.4f}  F1 {row['val_f1']:.4f}  P {row['val_precision']:.3f}  "
          f"R {row['val_recall']:.3f}  lr {row['lr']:.2e}  {row['epoch_seconds']:.0f}s  "
          f"{row['samples_per_s']:.1f} samples/s{'  *best' if improved_val is not None else ''}", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, STATE_FILE), "wb") as handle:
            handle.write(last)
        ray.train.report(row, checkpoint=RayCheckpoint.from_directory(directory))


# ---------------------------------------------------------------- driver

def _check_resume(cfg: Config, run: RunDirectory) -> None:
    if not run.holds_a_run():
        raise InputError(f"{run.last}: does not exist (nothing to resume in {run.path})")
    loaded = read_checkpoint(run.last, cfg.s3)
    if loaded.checkpoint is None or loaded.checkpoint.training is None:
        raise InputError(f"{run.last}: not a segcore training checkpoint (last.pt with the training state)")
    model = build_model(**dataclasses.asdict(dataclasses.replace(cfg.model, pretrained=False)))
    load_weights(model, loaded, cfg.model)  # a run of another model: one line, before any worker starts


def _initial_weights(cfg: Config) -> tuple[dict, str]:
    """train.init_from's weights of train.init_parts, checked against the model; and the line saying so."""
    t = cfg.train
    loaded: LoadedCheckpoint = read_checkpoint(t.init_from, cfg.s3)
    model = build_model(**dataclasses.asdict(dataclasses.replace(cfg.model, pretrained=False)))
    count = load_weights(model, loaded, cfg.model, t.init_parts)
    prefixes = tuple(prefix for part in t.init_parts for prefix in model.PARTS[part])
    weights = {key: value for key, value in loaded.state_dict.items() if key.startswith(prefixes)}
    fresh = [part for part in model.PARTS if part not in t.init_parts]
    line = (f"train.init_from {t.init_from} ({loaded.describe()}): loaded {', '.join(t.init_parts)} ({count} tensors);"
            f" initialized fresh: {', '.join(fresh) or 'nothing'}; optimizer and schedule start fresh")
    return weights, line


def resume_config(run_dir: str, path: str | None, overrides: list[str] | tuple[str, ...]) -> Config:
    """The config to continue the run in `run_dir` with: the run's own, with what the YAML file at `path` and the
    overrides set laid over it (e.g. more epochs)."""
    cfg = load_config(path, overrides)  # its s3 section says how to reach the run directory
    run = RunDirectory(absolute(run_dir), cfg.s3)
    if not run.holds_a_run():
        raise InputError(f"{run.last}: does not exist (nothing to resume in {run_dir})")
    stored = read_checkpoint(run.last, cfg.s3).checkpoint
    if stored is None or stored.training is None:
        raise InputError(f"{run.last}: not a segcore training checkpoint (last.pt with the training state)")
    return load_config(path, overrides, base=stored.training.config)


def run_training(cfg: Config, resume: str | None = None, hooks: TrainHooks | None = None) -> dict:
    """Train; returns the final reported metrics. `resume` is a run directory to continue from."""
    t = cfg.train
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        t, run_dir=absolute(resume or t.run_dir), data_root=absolute(t.data_root) if t.data_root else "",
        init_from=absolute(t.init_from) if t.init_from else ""))
    t = cfg.train
    run = RunDirectory(t.run_dir, cfg.s3)
    if resume:
        _check_resume(cfg, run)
    elif run.holds_a_run():
        raise InputError(f"{t.run_dir}: already holds a run; pass --resume {t.run_dir} to continue it, "
                         "or set train.run_dir to a new directory")
    init = _initial_weights(cfg) if t.init_from and not resume else None
    if not t.data_root:
        raise InputError("train.data_root is not set: "
                         "pass --set train.data_root=ROOT (ROOT/{train,val}/{images,labels})")
    pairs = {split: check_split(t.data_root, split, cfg, t.tile_size)[0] for split in ("train", "val")}
    if exists(join(t.data_root, "test"), cfg.s3):
        pairs["test"] = check_split(t.data_root, "test", cfg, t.tile_size)[0]
    if len(pairs["train"]) < t.num_workers:
        raise InputError(f"{t.data_root}: {len(pairs['train'])} training patches for {t.num_workers} workers")
    init_ray(cfg.storage, [("train.data_root", t.data_root), ("train.run_dir", t.run_dir),
                           ("train.init_from", t.init_from)])
    if init:
        print(init[1], flush=True)
    datasets = {split: patch_dataset(p, cfg) for split, p in pairs.items() if split != "train"}
    print(f"training on {', '.join(f'{len(p)} {s}' for s, p in pairs.items())} patches with {t.num_workers} "
          f"{'GPU' if t.use_gpu else 'CPU'} worker(s); run directory {t.run_dir}", flush=True)
    loop_config = {"cfg": cfg.to_dict(), "resume_from": run.last if resume else None, "hooks": hooks,
                   "init_weights": ray.put(init[0]) if init else None, "train_pairs": ray.put(pairs["train"]),
                   "splits": sorted(pairs), "gsd_m": training_gsd(t.data_root, cfg.s3)}
    trainer = make_trainer(loop_config, cfg, datasets, f"ray-train-{time.strftime('%Y%m%d-%H%M%S')}",
                           t.run_dir)
    return dict(trainer.fit().metrics or {})

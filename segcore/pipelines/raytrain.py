"""What training and evaluation share on Ray Train: patch datasets on Ray Data, all-reduced statistics, run
storage and the TorchTrainer itself (its loop entry and dataset split are in `train_entry`).

Driver side: `check_split` checks a split's patches (one clear line before any worker starts), `patch_dataset`
builds the Ray Dataset of a validation or test split's patch paths that a `PatchReader` decodes in CPU tasks.
Worker side: `epoch_shard` is a worker's training patches of one epoch (decoded and augmented the same way),
`all_reduce` sums `EpochStats` over the workers, `unwrap` takes DDP's wrapper off.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from segcore.config import Config
from segcore.data.patches import PatchReader, list_pairs, patch_size
from segcore.errors import InputError
from segcore.model.refinenet import INPUT_SIZE_MULTIPLE
from segcore.pipelines.train_entry import ExactEvalSplit, train_worker
from segcore.storage import filesystem, is_s3
from segcore.training import EpochStats

PATCH_BATCH = 16  # patches decoded per Ray Data task


def check_split(root: str, split: str, cfg: Config, tile_size: int | None = None) -> tuple[list, int]:
    """(image, label) pairs of one split and their patch size, after checking every file's size.

    With `tile_size`, every patch must be tile_size x tile_size (training); without, every patch must have the
    size of the first, a square multiple of the model's input multiple (evaluation: the model is fully
    convolutional).
    """
    pairs = list_pairs(root, split, cfg.s3)
    fs = filesystem(root, cfg.s3)
    paths = [path for pair in pairs for path in pair]
    with ThreadPoolExecutor(16) as pool:
        sizes = list(pool.map(lambda path: patch_size(fs, path), paths))
    size = tile_size or sizes[0][0]
    if tile_size is None and (sizes[0][0] != sizes[0][1] or size % INPUT_SIZE_MULTIPLE):
        raise InputError(f"{paths[0]}: patch is {sizes[0][1]}x{sizes[0][0]}, expected a square whose side is a "
                         f"multiple of {INPUT_SIZE_MULTIPLE}")
    for path, (height, width) in zip(paths, sizes, strict=True):
        if (height, width) != (size, size):
            what = "(train.tile_size)" if tile_size else f"(the size of {paths[0]})"
            raise InputError(f"{path}: patch is {width}x{height}, expected {size}x{size} {what}")
    return pairs, size


def patch_dataset(pairs: list[tuple[str, str]], cfg: Config) -> ray.data.Dataset:
    """A split's patches as they are (validation and test)."""
    items = [{"image": image, "label": label} for image, label in pairs]
    return ray.data.from_items(items).map_batches(PatchReader(cfg.s3), batch_size=PATCH_BATCH, batch_format="numpy")


def epoch_shard(pairs: list[tuple[str, str]], cfg: Config, epoch: int, rank: int, world: int) -> ray.data.Dataset:
    """Worker `rank`'s augmented training patches of one epoch, in a fixed order.

    A permutation of every patch, drawn from (train.seed, epoch), is cut into `world` equal runs (DDP steps
    in lock-step; the remainder sits the epoch out), and each patch carries its own augmentation seed. So a
    rerun with the same seed sees the same batches, augmented the same way, whichever processes read them.
    """
    t = cfg.train
    order = np.random.default_rng((t.seed, epoch)).permutation(len(pairs))
    seeds = np.random.default_rng((t.seed, epoch, 1)).integers(0, 2**63, len(pairs))
    share = len(pairs) // world
    items = [{"image": pairs[i][0], "label": pairs[i][1], "seed": int(seeds[i])}
             for i in order[rank * share:(rank + 1) * share]]
    dataset = ray.data.from_items(items).map_batches(PatchReader(cfg.s3, t.augment), batch_size=PATCH_BATCH,
                                                     batch_format="numpy")
    dataset.set_name(f"train-epoch{epoch}-rank{rank}")
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False  # one per worker and epoch; rank 0 prints a line per epoch
    return dataset


def all_reduce(stats: EpochStats, device: torch.device) -> EpochStats:
    """`stats` summed over every worker (exact: counts and sums, not means)."""
    packed = stats.to_tensor()
    if dist.is_available() and dist.is_initialized():
        # gloo reduces CPU tensors; NCCL needs them on the GPU.
        packed = packed.to(device) if device.type == "cuda" else packed
        dist.all_reduce(packed)
    return EpochStats.from_tensor(packed)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def worker_setup(cfg: Config) -> torch.device:
    """The worker's device; CPU workers use as many torch threads as the CPUs they were given.

    A worker given a GPU that torch cannot see (no CUDA build or driver; a node that declares GPUs it lacks,
    as the simulated cluster of the tests does) trains on the CPU, and says so."""
    device = ray.train.torch.get_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"warning: worker {ray.train.get_context().get_world_rank()} was given a GPU, but torch sees no CUDA "
              "device: training on the CPU", flush=True)
        device = torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    return device


def _storage(run_dir: str, cfg: Config) -> dict[str, Any]:
    """RunConfig storage arguments for a local or s3:// run directory (custom S3 endpoints included)."""
    if not is_s3(run_dir):
        return {"storage_path": str(Path(run_dir).resolve())}
    import pyarrow.fs

    kwargs: dict[str, Any] = {"retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(cfg.s3.max_attempts)}
    if cfg.s3.endpoint_url:
        kwargs["endpoint_override"] = cfg.s3.endpoint_url
        if cfg.s3.endpoint_url.startswith("http://"):
            kwargs["scheme"] = "http"
    if cfg.s3.region:
        kwargs["region"] = cfg.s3.region
    return {"storage_path": run_dir[len("s3://"):], "storage_filesystem": pyarrow.fs.S3FileSystem(**kwargs)}


def make_trainer(loop_config: dict, cfg: Config, datasets: dict, name: str, storage: str) -> TorchTrainer:
    """A TorchTrainer of cfg.train's workers (gloo on CPUs, NCCL on GPUs) running `train_loop(loop_config)`
    and keeping Ray's checkpoints in `storage`."""
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}
    return TorchTrainer(
        train_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1), **_storage(storage, cfg)),
        torch_config=TorchConfig(backend=t.backend if t.backend != "auto" else "nccl" if t.use_gpu else "gloo"),
        datasets=datasets, dataset_config=ExactEvalSplit())

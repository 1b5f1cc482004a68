"""Evaluation of a checkpoint on one split of a patch dataset, on Ray Data.

The checkpoint decides the model, the normalization and the threshold (segcore checkpoints carry them; a
fork checkpoint loads into the config's `model` section, with the config's input and train.threshold). Any
patch size the model accepts is scored. A pool of `PatchScorer` actors (train.num_workers of them, with
train.cpus_per_worker / gpus_per_worker each) reads, decodes and scores batches of patches; the driver sums
their confusion counts and histograms, which is exact: every patch is scored once, whatever the pool size.
Object metrics match the buildings of each patch alone (one-to-one at IoU >= polygons.match_iou, SpaceNet's
rule), so a building cut by a patch edge counts in each patch it lies in.
"""
from __future__ import annotations

import copy

import numpy as np
import ray
import torch

from segcore.checkpoint import load_model
from segcore.config import Config
from segcore.data.patches import SPLITS, PatchReader
from segcore.errors import InputError
from segcore.inference import pick_device
from segcore.losses import build_loss
from segcore.pipelines import init_ray
from segcore.pipelines.raytrain import PATCH_BATCH, check_split
from segcore.storage import absolute
from segcore.training import EpochStats, evaluate
from segcore.vectors.objects import ObjectCounts, mask_object_counts


class PatchScorer:
    """Ray Data actor: takes the model once, then reads and scores batches of patch paths."""

    def __init__(self, model: list, cfg: Config):
        self.cfg = cfg
        t = cfg.train
        self.device = pick_device(t.gpus_per_worker if t.use_gpu else 0)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(t.cpus_per_worker)))
        self.model = ray.get(model[0]).to(self.device)  # wrapped in a list: Ray Data would not resolve it
        self.read = PatchReader(cfg.s3)
        self.loss = build_loss(t.loss, t.loss_weight)

    def __call__(self, batch: dict) -> dict:
        patches: list[ObjectCounts] = []

        def score_buildings(probabilities: np.ndarray, target: np.ndarray) -> None:
            patches.extend(mask_object_counts(probability >= self.cfg.train.threshold, truth,
                                              np.rint(probability * 255).astype(np.uint8), self.cfg.polygons.match_iou)
                           for probability, truth in zip(probabilities[:, 0], target[:, 0], strict=True))

        stats = evaluate(self.model, [self.read(batch)], self.loss, self.device, self.cfg.train, score_buildings)
        objects = sum(patches, ObjectCounts())
        return {"stats": stats.to_tensor().numpy()[None], "objects": np.array([objects.to_array()])}


def run_evaluation(cfg: Config, checkpoint: str, data_root: str, split: str = "test",
                   threshold: float | None = None) -> dict:
    """Metrics of a checkpoint (segcore or fork) on one split of the patch dataset at `data_root`."""
    if split not in SPLITS:
        raise InputError(f"split {split!r} is unknown: expected one of {', '.join(SPLITS)}")
    if threshold is not None and not 0 < threshold < 1:
        raise InputError(f"threshold {threshold!r}: expected a probability in (0, 1)")
    checkpoint, data_root = absolute(checkpoint), absolute(data_root)
    loaded = load_model(checkpoint, cfg.model, cfg.s3)  # on the driver: a bad file is one line, nothing starts
    cfg = copy.deepcopy(cfg)
    cfg.model = loaded.model_cfg
    cfg.input = loaded.input_cfg or cfg.input
    cfg.train.threshold = next(value for value in (threshold, loaded.threshold, cfg.train.threshold)
                               if value is not None)
    pairs, size = check_split(data_root, split, cfg)
    init_ray(cfg.storage, [("--checkpoint", checkpoint), ("--data", data_root)])
    t = cfg.train
    print(f"evaluating {checkpoint} ({loaded.checkpoint.describe()}) on {len(pairs)} {split} patches of "
          f"{size}x{size} at threshold {t.threshold:g}", flush=True)
    items = [{"image": image, "label": label} for image, label in pairs]
    scored = ray.data.from_items(items).map_batches(
        PatchScorer, fn_constructor_kwargs=dict(model=[ray.put(loaded.model)], cfg=cfg), batch_size=PATCH_BATCH,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=t.num_workers), num_cpus=t.cpus_per_worker,
        num_gpus=t.gpus_per_worker if t.use_gpu else 0)
    rows = list(scored.iter_rows())
    stats = EpochStats.from_tensor(torch.from_numpy(np.sum([row["stats"] for row in rows], axis=0)))
    objects = ObjectCounts.from_array(np.sum([row["objects"] for row in rows], axis=0))
    return {"split": split, "threshold": t.threshold, "patch_size": size, "loss": stats.loss,
            "samples": stats.samples, **stats.counts.summary(), **stats.histogram.summary(),
            "objects": objects.summary()}

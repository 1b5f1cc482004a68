"""Helpers the tests share: running segment in-process, reading its outputs, and checking one-line errors and
what a run leaves behind."""
from __future__ import annotations

import contextlib
import csv
import io
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rasterio

from segcore.config import Config, load_config
from segcore.pipelines.segment import plan_segment, run_segment

TILE = 64  # patch size of the training tests' patch sets


def small_config(root, run_dir, *extra):
    return load_config(None, [
        "model.backbone=resnet18", "model.decoder_width=16", f"train.tile_size={TILE}", "train.batch_size=4",
        "train.lr=3e-3", "train.num_workers=2", "train.cpus_per_worker=0.5", "train.use_gpu=false",
        "train.precision=fp32", "train.scheduler=cosine", f"train.data_root={root}", f"train.run_dir={run_dir}",
        *extra])


def segment(inputs, out, checkpoint, cfg: Config, *, labels=(), model_factory=None) -> tuple[dict, str]:
    """Plan and run segment in this process; the summary and everything printed to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        plan = plan_segment([str(p) for p in inputs], str(checkpoint), str(out), cfg, [str(p) for p in labels],
                            model_factory=model_factory)
        summary = run_segment(plan)
    return summary, err.getvalue()


def by_key(summary: dict) -> dict:
    return {entry["key"]: entry for entry in summary["inputs"]}


def by_name(summary: dict) -> dict:
    return {Path(entry["input"]).name: entry for entry in summary["inputs"]}


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def read_band(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def block_files(out: Path, key: str) -> list[Path]:
    """Finished block files of one input (temporary names end otherwise and are never counted)."""
    return sorted((out / ".work").glob(f"{key}-*/block_*.npz"))


def s3_block_count(client, bucket: str, output: str) -> int:
    """Finished block files of a segment run whose output is s3://BUCKET/OUTPUT, asked of S3 directly."""
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{output}/.work/")
    return sum(entry["Key"].endswith(".npz") for entry in listing.get("Contents", []))


def wait_for(condition, timeout: float = 300, every: float = 0.02) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def one_line_error(exc: BaseException, *words: str) -> str:
    message = str(exc)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def leftovers(out: Path) -> list[Path]:
    return sorted(out.parent.glob(out.name + "*"))


def run_in_thread(plan) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def work():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                result["summary"] = run_segment(plan)
            except BaseException as exc:
                result["exception"] = exc
        result["err"] = err.getvalue()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, result


def blobs(height: int, width: int, seed: int) -> np.ndarray:
    """A mask of smooth random buildings (1) on background (0), with scattered nodata (255)."""
    rng = np.random.default_rng(seed)
    field = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 2.5)
    mask = (field > np.quantile(field, 0.7)).astype(np.uint8)
    mask[rng.random((height, width)) < 0.01] = 255  # scattered nodata
    return mask

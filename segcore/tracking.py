"""Run tracking for training: every epoch's metrics and the run's plots in TensorBoard and/or MLflow.

The Ray Train rank-0 worker opens one `Tracking` per run with `open_tracking`, logs each epoch and each
artifact, and saves `state()` in its checkpoints: a resumed run passes that state back and continues the
same TensorBoard run (events from the resumed epoch on replace the first attempt's) and the same MLflow run.

- TensorBoard: tensorboardX event files in `run_dir/tensorboard/`. For an s3:// run_dir they are written
  locally and uploaded at every epoch, one file per epoch, so nothing is uploaded twice.
- MLflow (`pip install .[mlflow]`): the server at $MLFLOW_TRACKING_URI, else a store in the run directory
  (`run_dir/mlruns/`: an SQLite database and the artifacts; MLflow 3 no longer offers a plain file store).
  The experiment is $MLFLOW_EXPERIMENT_NAME, else "segcore"; the run is named after the run directory.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol

import cv2
import numpy as np
import yaml

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter

from segcore.config import ConfigError, S3Config
from segcore.errors import InputError
from segcore.storage import is_s3, join, write_bytes

TrackingKind = Literal["tensorboard", "mlflow"]
MLFLOW_PARAM_LENGTH = 500  # the longest parameter value every MLflow server accepts
DEFAULT_EXPERIMENT = "segcore"


def check_tracking(kinds: list[TrackingKind], run_dir: str) -> None:
    """Raise a one-line ConfigError, before training starts, if these kinds of tracking cannot work here."""
    if "mlflow" not in kinds:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("train.tracking includes mlflow, which is not installed: pip install '.[mlflow]' "
                          "(or drop mlflow from train.tracking)") from None
    if is_s3(run_dir) and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(f"train.tracking includes mlflow and train.run_dir {run_dir} is on S3, where no MLflow "
                          "store can live: set MLFLOW_TRACKING_URI to a tracking server")


def _markdown_code(text: str) -> str:
    """Text shown as is by TensorBoard's text dashboard (which renders markdown): an indented code block."""
    return "\n".join("    " + line for line in text.splitlines())


def _flat(params: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _Backend(Protocol):
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def log_artifact(self, name: str, data: bytes) -> None: ...

    def state(self) -> dict: ...

    def close(self, status: str) -> None: ...


class _TensorBoard:
    def __init__(self, run_dir: str, params: dict, resume: dict | None, s3: S3Config | None):
        self.remote = join(run_dir, "tensorboard") if is_s3(run_dir) else None
        self.logdir = tempfile.mkdtemp(prefix="segcore-tensorboard-") if self.remote else join(run_dir, "tensorboard")
        self.s3 = s3
        self.next_step = int(resume["next_step"]) if resume else 0
        # A resumed run's first event file purges what the first attempt logged from this step on.
        self.purge_step: int | None = self.next_step if resume else None
        self.writer: SummaryWriter | None = None
        self._writer().add_text("config", _markdown_code(yaml.safe_dump(params, sort_keys=False)), self.next_step)

    def _writer(self) -> SummaryWriter:
        from tensorboardX import (
            SummaryWriter,  # imported here: it imports torch when torch is installed
        )

        if self.writer is None:
            # Event files are named by the second they start in, and one of the same name is overwritten: the
            # suffix keeps files of one second apart (a resume, a file per epoch on S3), in order.
            self.writer = SummaryWriter(self.logdir, purge_step=self.purge_step,
                                        filename_suffix=f".{time.time_ns()}")
            self.purge_step = None
        return self.writer

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        writer = self._writer()
        for name, value in metrics.items():
            writer.add_scalar(name, value, epoch)
        self.next_step = epoch + 1
        self._publish()

    def log_artifact(self, name: str, data: bytes) -> None:
        """PNGs become images and UTF-8 files text, at the last epoch logged; TensorBoard has no place for others."""
        step = max(self.next_step - 1, 0)
        if PurePosixPath(name).suffix.lower() == ".png":
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is not None:
                self._writer().add_image(name, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), step, dataformats="HWC")
        else:
            try:
                self._writer().add_text(name, _markdown_code(data.decode("utf-8")), step)
            except UnicodeDecodeError:
                return
        if self.remote is None:  # on S3 it goes up with the next epoch's file, or on close
            self._publish()

    def _publish(self) -> None:
        """Make what was logged visible: flushed locally; on S3, the event file closed and uploaded."""
        if self.writer is None:
            return
        if self.remote is None:
            self.writer.flush()
            return
        self.writer.close()
        self.writer = None
        for name in sorted(os.listdir(self.logdir)):
            local = os.path.join(self.logdir, name)
            with open(local, "rb") as handle:
                write_bytes(join(self.remote, name), handle.read(), self.s3)
            os.remove(local)

    def state(self) -> dict:
        return {"next_step": self.next_step}

    def close(self, status: str) -> None:
        self._publish()
        if self.writer is not None:
            self.writer.close()
        if self.remote:
            shutil.rmtree(self.logdir, ignore_errors=True)


class _MLflow:
    def __init__(self, run_dir: str, params: dict, resume: dict | None):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri, artifacts = os.environ.get("MLFLOW_TRACKING_URI"), None
        if not uri:
            store = Path(run_dir, "mlruns").absolute()
            store.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
        self.client = MlflowClient(uri)
        flat = {key: str(value)[:MLFLOW_PARAM_LENGTH] for key, value in _flat(params).items()}
        if resume:
            self.run_id = resume["run_id"]
            try:
                logged = self.client.get_run(self.run_id).data.params
            except MlflowException:
                raise InputError(f"MLflow run {self.run_id} (from the checkpoint) is not in the tracking store "
                                 f"{uri}: set MLFLOW_TRACKING_URI to the store the run started in") from None
            self.client.update_run(self.run_id, status="RUNNING")
            # Parameters cannot change in MLflow: ones the resumed config changes are kept as tags.
            self._log_params({k: v for k, v in flat.items() if k not in logged},
                             {f"resumed.{k}": v for k, v in flat.items() if k in logged and logged[k] != v})
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else \
                self.client.create_experiment(name, artifact_location=artifacts)
            run = self.client.create_run(experiment_id, run_name=PurePosixPath(run_dir.rstrip("/")).name,
                                         tags={"segcore.run_dir": run_dir})
            self.run_id = run.info.run_id
            self._log_params(flat, {})

    def _log_params(self, params: dict[str, str], tags: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        entries = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(entries), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=entries[start:start + 100])
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])

    def log_artifact(self, name: str, data: bytes) -> None:
        path = PurePosixPath(name)
        folder = None if path.parent == PurePosixPath(".") else str(path.parent)
        with tempfile.TemporaryDirectory(prefix="segcore-artifact-") as local_dir:
            local = os.path.join(local_dir, path.name)
            with open(local, "wb") as handle:
                handle.write(data)
            self.client.log_artifact(self.run_id, local, folder)

    def state(self) -> dict:
        return {"run_id": self.run_id}

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class Tracking:
    """Where a training run's metrics and plots go, besides its run directory. Use as a context manager
    (or call `close`): the MLflow run ends FINISHED, or FAILED when the block raises."""

    def __init__(self, backends: dict[str, _Backend]):
        self.backends = backends

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Log the numbers in `metrics` (losses, IoU, learning rate, samples/s, ...) at step `epoch`."""
        numbers = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
        for backend in self.backends.values():
            backend.log_epoch(epoch, numbers)

    def log_artifact(self, name: str, data: bytes) -> None:
        """A file of the run (a PNG plot, a text file) by name; logging a name again replaces it."""
        for backend in self.backends.values():
            backend.log_artifact(name, data)

    def state(self) -> dict:
        """Plain data to keep in the checkpoint; `open_tracking(..., resume=state)` continues the same runs."""
        return {kind: backend.state() for kind, backend in self.backends.items()}

    def close(self, failed: bool = False) -> None:
        for backend in self.backends.values():
            backend.close("FAILED" if failed else "FINISHED")

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self.close(failed=kind is not None)


def open_tracking(kinds: list[TrackingKind], run_dir: str, params: dict, resume: dict | None = None,
                  s3: S3Config | None = None) -> Tracking:
    """Start (or, with `resume` from a checkpoint's `Tracking.state()`, continue) tracking of a run.

    `params` is the resolved config as a nested dict: TensorBoard shows it as text, MLflow logs it as
    parameters ("train.lr", ...).
    """
    check_tracking(kinds, run_dir)
    resume = resume or {}
    backends: dict[str, _Backend] = {}
    if "tensorboard" in kinds:
        backends["tensorboard"] = _TensorBoard(run_dir, params, resume.get("tensorboard"), s3)
    if "mlflow" in kinds:
        backends["mlflow"] = _MLflow(run_dir, params, resume.get("mlflow"))
    return Tracking(backends)

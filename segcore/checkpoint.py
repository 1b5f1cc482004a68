"""Checkpoints: the one segcore format, and one reader for every kind of checkpoint users bring.

Every file is read once, as bytes, and unpickled with ``torch.load(weights_only=True)``: tensors, plain
containers and numbers only. The single exception is the numpy scalar the fork stores its best validation
loss as (``NUMPY_SCALAR_GLOBALS``); anything else, pickled code above all, is refused in one line.

Kinds the reader recognises:
    segcore        a `Checkpoint` written by training (best.pt for inference, last.pt with the training state)
    fork state     the training state of the public fork's ``TrainStateCallback`` (``state/best.pt``,
                   ``state/default.pt``): {"model", "optimizer", "start_epoch", "step", "end_epoch", "bst_vld_loss"}
    fork weights   the fork's bare state dict (its published weights), maybe with ``module.`` prefixes
Fork files carry no architecture: they load into the model the config's ``model`` section describes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from segcore.config import (
    DEFAULT_THRESHOLD,
    InputConfig,
    ModelConfig,
    S3Config,
    section_from_dict,
)
from segcore.errors import InputError
from segcore.model import build_model
from segcore.model.fork import from_fork_state_dict, to_fork_key
from segcore.storage import describe_error, filesystem, write_bytes

FORMAT = "segcore-checkpoint/1"
FORK_STATE_KEYS = {"model", "optimizer", "start_epoch", "step", "end_epoch", "bst_vld_loss"}

# The fork's training state holds np.mean(...) of its validation losses: a numpy float64. These globals
# rebuild numpy scalars and their dtypes and nothing else. numpy 1 pickles the scalar reconstructor as
# numpy.core.multiarray.scalar and numpy 2 as numpy._core.multiarray.scalar: both names are allowed.
_numpy_scalar = np.float64(0).__reduce__()[0]
NUMPY_SCALAR_GLOBALS: list[Any] = [
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
]
_KEYS_SHOWN = 3


@dataclass
class TrainingState:
    """What last.pt holds beyond the weights, so that --resume continues the same run."""

    optimizer: dict
    scheduler: dict
    config: dict  # the run's whole Config as plain data
    progress: dict  # `segcore.training.Progress` as plain data


@dataclass
class Checkpoint:
    """A segcore checkpoint: weights plus everything inference needs, as plain data."""

    model: ModelConfig
    input: InputConfig  # the normalization the weights were trained with
    state_dict: dict[str, torch.Tensor]
    threshold: float = DEFAULT_THRESHOLD  # the decision threshold training measured with
    best_f1_threshold: float | None = None  # the validation threshold that maximised F1
    tile_size: int | None = None  # the patch size it was trained on
    gsd_m: float | None = None  # the training imagery's ground sample distance (metres per pixel), if known
    epoch: int = 0
    metrics: dict = field(default_factory=dict)
    val_histogram: dict | None = None  # {"positives", "negatives"}: per-bin pixel counts on validation
    training: TrainingState | None = None  # last.pt only

    def to_bytes(self) -> bytes:
        payload = {"format": FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        payload.update(model=dataclasses.asdict(self.model), input=dataclasses.asdict(self.input),
                       training=dataclasses.asdict(self.training) if self.training else None)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    def save(self, path: str, s3: S3Config | None = None) -> None:
        """Write atomically (temporary name and rename locally, one PUT on S3)."""
        write_bytes(path, self.to_bytes(), s3)

    @classmethod
    def from_payload(cls, data: dict, path: str) -> Checkpoint:
        missing = sorted({"model", "input", "state_dict"} - set(data))
        if missing:
            raise InputError(f"{path}: segcore checkpoint without {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["model"] = section_from_dict(ModelConfig, dict(data["model"], pretrained=False), "checkpoint.model")
        values["input"] = section_from_dict(InputConfig, data["input"], "checkpoint.input")
        try:
            if data.get("training") is not None:
                values["training"] = TrainingState(**data["training"])
            return cls(**values)
        except TypeError as exc:  # a field this version does not know, or one missing
            raise InputError(f"{path}: not a {FORMAT} checkpoint of this version ({exc})") from None


Kind = Literal["segcore", "fork state", "fork weights"]


@dataclass
class LoadedCheckpoint:
    """One checkpoint file as read: its weights under RefineNet's key names, and what it is."""

    path: str
    sha256: str  # of the file's bytes, e.g. to tag outputs that depend on it
    kind: Kind
    state_dict: dict[str, torch.Tensor]
    file_keys: dict[str, str]  # key -> its name in the file (fork files use the fork's names)
    checkpoint: Checkpoint | None = None  # the segcore payload
    fork_state: dict = field(default_factory=dict)  # a fork training state's other entries (epochs, loss)

    def model_config(self, fallback: ModelConfig) -> ModelConfig:
        """The architecture: the checkpoint's own, or `fallback` (the config's) for fork files."""
        return self.checkpoint.model if self.checkpoint else dataclasses.replace(fallback, pretrained=False)

    def describe(self) -> str:
        if self.checkpoint:
            model = self.checkpoint.model
            return f"segcore checkpoint, epoch {self.checkpoint.epoch}, {model.arch}-{model.backbone}"
        if self.kind == "fork state":
            loss = self.fork_state.get("bst_vld_loss")
            loss_text = f", best val loss {float(loss):.4g}" if isinstance(loss, (float, np.floating)) else ""
            return f"fork training state, epoch {self.fork_state.get('start_epoch')}{loss_text}"
        return "fork weights"

    def key_name(self, key: str) -> str:
        """`key` as the file names it (or would name it, for a key the file lacks)."""
        return self.file_keys.get(key) or (key if self.checkpoint else to_fork_key(key))


def _unpickling_reason(exc: Exception) -> str:
    """The specific line of torch's weights_only error (e.g. "unsupported GLOBAL posix.system"), not its
    generic preamble about the PyTorch 2.6 default."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if "nsupported" in line or "GLOBAL" in line]
    return (specific or lines or [type(exc).__name__])[0][:160]


def _unpickle(path: str, data: bytes) -> Any:
    if not data:
        raise InputError(f"{path}: not a PyTorch checkpoint (empty file)")
    try:
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: refused: not a plain-data checkpoint (weights_only load failed: "
                         f"{_unpickling_reason(exc)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise InputError(f"{path}: not a PyTorch checkpoint ({' '.join(str(exc).split())[:120]})") from None


def _tensor_dict(value: Any, path: str, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        kind = type(value).__name__ if not isinstance(value, Mapping) else "mapping with non-tensor values"
        raise InputError(f"{path}: {what} holds a {kind}, expected a state dict of tensors")
    return dict(value)


def read_checkpoint(path: str, s3: S3Config | None = None) -> LoadedCheckpoint:
    """Read any checkpoint kind (see the module docstring); one-line InputErrors for anything else."""
    try:
        with filesystem(path, s3).open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InputError(describe_error(path, exc)) from None
    content = _unpickle(path, data)
    sha256 = hashlib.sha256(data).hexdigest()
    if not isinstance(content, Mapping):
        raise InputError(f"{path}: not a checkpoint (holds a {type(content).__name__}, expected a dict of weights)")
    if content.get("format") == FORMAT:
        checkpoint = Checkpoint.from_payload(dict(content), path)
        state_dict = _tensor_dict(checkpoint.state_dict, path, "state_dict")
        return LoadedCheckpoint(path, sha256, "segcore", state_dict, {}, checkpoint)
    if "format" in content:
        raise InputError(f"{path}: checkpoint format {content['format']!r} is not {FORMAT!r}")
    if isinstance(content.get("model"), Mapping):  # the fork's training state
        state_dict, names = from_fork_state_dict(_tensor_dict(content["model"], path, "'model'"))
        others = {key: value for key, value in content.items() if key in FORK_STATE_KEYS - {"model", "optimizer"}}
        return LoadedCheckpoint(path, sha256, "fork state", state_dict, names, fork_state=others)
    state_dict, names = from_fork_state_dict(_tensor_dict(content, path, "the file"))
    return LoadedCheckpoint(path, sha256, "fork weights", state_dict, names)


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_KEYS_SHOWN])
    return shown + (", ..." if len(keys) > _KEYS_SHOWN else "")


def _mismatch(loaded: LoadedCheckpoint, model: nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    """The problems of loading `loaded` into the keys of `model` that start with `prefixes`, in the file's names."""
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    known = tuple(prefix for part in getattr(model, "PARTS", {}).values() for prefix in part)
    unexpected = [loaded.key_name(k) for k in loaded.state_dict
                  if k not in expected and (k.startswith(prefixes) or not k.startswith(known))]
    missing = [loaded.key_name(k) for k in expected if k not in loaded.state_dict]
    shapes = [f"{loaded.key_name(k)}: {tuple(v.shape)} vs {tuple(expected[k].shape)}"
              for k, v in loaded.state_dict.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    for count, what, keys in ((len(missing), "missing keys", missing), (len(unexpected), "unexpected", unexpected),
                              (len(shapes), "shape mismatch", shapes)):
        if count:
            problems.append(f"{count} {what} ({_keys(keys)})")
    return problems


def _describe_model(cfg: ModelConfig) -> str:
    return f"{cfg.arch}({cfg.backbone}, decoder_width={cfg.decoder_width})"


def load_weights(model: nn.Module, loaded: LoadedCheckpoint, model_cfg: ModelConfig,
                 parts: Sequence[str] | None = None) -> int:
    """Load the checkpoint's weights of `parts` (default: all) into `model` strictly; returns the tensor count.

    A missing or unexpected key or a shape mismatch within those parts is an InputError naming the keys
    as the file names them. Keys of other parts of the model are ignored.
    """
    all_parts = getattr(model, "PARTS", {"model": ("",)})
    prefixes = tuple(prefix for part in (parts or list(all_parts)) for prefix in all_parts[part])
    problems = _mismatch(loaded, model, prefixes)
    if problems:
        scope = f" for {', '.join(parts)}" if parts and set(parts) != set(all_parts) else ""
        raise InputError(f"{loaded.path}: weights do not match {_describe_model(model_cfg)}{scope}: "
                         + ", ".join(problems))
    selected = {k: v for k, v in loaded.state_dict.items() if k.startswith(prefixes)}
    model.load_state_dict(selected, strict=not parts or set(parts) == set(all_parts))
    return len(selected)


@dataclass
class LoadedModel:
    model: nn.Module
    model_cfg: ModelConfig
    input_cfg: InputConfig | None  # None for fork checkpoints: they carry no normalization
    threshold: float | None  # stored decision threshold, None for fork checkpoints
    checkpoint: LoadedCheckpoint


def load_model(source: str | LoadedCheckpoint, model_cfg: ModelConfig, s3: S3Config | None = None) -> LoadedModel:
    """The model a checkpoint holds, built as the checkpoint (segcore) or `model_cfg` (fork files) describes."""
    loaded = source if isinstance(source, LoadedCheckpoint) else read_checkpoint(source, s3)
    cfg = loaded.model_config(model_cfg)
    model = build_model(**dataclasses.asdict(cfg))
    load_weights(model, loaded, cfg)
    stored = loaded.checkpoint
    return LoadedModel(model.eval(), cfg, stored.input if stored else None, stored.threshold if stored else None,
                       loaded)

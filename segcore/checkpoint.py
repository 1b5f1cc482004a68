"""Checkpoints as plain data: weights plus everything inference needs, loadable with weights_only=True.

A segcore checkpoint is a dict:
    format      "segcore-checkpoint/1"
    model       the ModelConfig as a dict (arch, backbone, decoder_width, pretrained)
    input       the InputConfig as a dict (bands, scale_max, nodata): the normalization
    threshold   the decision threshold training used for its metrics
    best_f1_threshold  the validation threshold that maximised F1 (None until measured)
    state_dict  the model weights
    epoch, metrics, and (for resume only) optimizer/scheduler state under "training"
A checkpoint of the public fork (a bare state dict, maybe under "model", maybe with "module.") also
loads, into the architecture the config describes.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from segcore.config import InputConfig, ModelConfig, S3Config, _build
from segcore.errors import InputError
from segcore.model import build_model
from segcore.model.fork import load_fork_checkpoint
from segcore.storage import describe_error, filesystem, write_bytes

FORMAT = "segcore-checkpoint/1"


def save_checkpoint(path: str, payload: dict, s3: S3Config | None = None) -> None:
    """Serialize `payload` (plain data and tensors only) and write it atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    write_bytes(path, buffer.getvalue(), s3)


def read_checkpoint(path: str, s3: S3Config | None = None) -> Any:
    """torch.load with weights_only=True; anything else (random bytes, pickled code) is refused in one line."""
    try:
        with filesystem(path, s3).open(path, "rb") as handle:
            data = handle.read()
    except (OSError, PermissionError) as exc:
        raise InputError(describe_error(path, exc)) from None
    if not data:
        raise InputError(f"{path}: not a PyTorch checkpoint (empty file)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: refused: not a plain-data checkpoint (weights_only load failed: "
                         f"{_unpickling_reason(exc)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise InputError(f"{path}: not a PyTorch checkpoint ({' '.join(str(exc).split())[:120]})") from None


def _unpickling_reason(exc: Exception) -> str:
    """The specific line of torch's weights_only error (e.g. "unsupported GLOBAL posix.system"), not its
    generic preamble about the PyTorch 2.6 default."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if "nsupported" in line or "GLOBAL" in line]
    return (specific or lines or [type(exc).__name__])[0][:160]


def check_weights(path: str, model_cfg: ModelConfig, state_dict: Any) -> None:
    """Load `state_dict` strictly into the model `model_cfg` describes (built here, without pretrained
    weights), so a mismatch fails in one line naming the keys before any worker is started."""
    model = build_model(**dataclasses.asdict(dataclasses.replace(model_cfg, pretrained=False)))
    try:
        if not isinstance(state_dict, dict):
            raise RuntimeError(f"state_dict holds a {type(state_dict).__name__}, not a dict of tensors")
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not match {model_cfg.arch}({model_cfg.backbone}): "
                         f"{' '.join(str(exc).split())[:200]}") from None


@dataclass
class LoadedModel:
    model: nn.Module
    model_cfg: ModelConfig
    input_cfg: Optional[InputConfig]  # None for fork checkpoints: they carry no normalization
    threshold: Optional[float]  # stored decision threshold, None for fork checkpoints
    source: str  # "segcore" or "fork"


def load_model(path: str, model_cfg: ModelConfig, s3: S3Config | None = None) -> LoadedModel:
    """Build the model a checkpoint describes (segcore format) or `model_cfg` describes (fork format), strictly."""
    data = read_checkpoint(path, s3)
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a checkpoint (holds a {type(data).__name__}, expected a dict of weights)")
    if data.get("format") == FORMAT:
        stored_cfg = _build(ModelConfig, dict(data["model"], pretrained=False), "checkpoint.model")
        model = build_model(**dataclasses.asdict(stored_cfg))
        try:
            model.load_state_dict(data["state_dict"], strict=True)
        except RuntimeError as exc:
            raise InputError(f"{path}: weights do not match {stored_cfg.arch}({stored_cfg.backbone}): "
                             f"{' '.join(str(exc).split())[:200]}") from None
        input_cfg = _build(InputConfig, data["input"], "checkpoint.input")
        return LoadedModel(model.eval(), stored_cfg, input_cfg, float(data["threshold"]), "segcore")
    fork_cfg = dataclasses.replace(model_cfg, pretrained=False)
    model = build_model(**dataclasses.asdict(fork_cfg))
    try:
        load_fork_checkpoint(model, data)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    return LoadedModel(model.eval(), fork_cfg, None, None, "fork")

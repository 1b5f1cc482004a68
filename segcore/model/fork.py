"""Checkpoints of the public ``building_footprint_segmentation`` fork (0.2.4) <-> RefineNet.

The fork's ``ReFineNet`` has exactly the parameters of :class:`RefineNet` under other
names; ``FORK_PREFIX_RENAMES`` is the whole translation. Fork trainers save either the bare
state dict or their training state ``{"model": state_dict, "optimizer": ..., ...}``, with a
``module.`` prefix on every key when the model was wrapped in DataParallel.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch

from segcore.model.refinenet import RefineNet

_DATA_PARALLEL_PREFIX = "module."

# Renames inside one refine block (the fork's names first).
_REFINE_BLOCK_RENAMES = (
    ("residual_convolution_unit.convolution_layer_1.", "rcu.conv1."),
    ("residual_convolution_unit.convolution_layer_2.", "rcu.conv2."),
    ("multi_resolution_fusion.convolution_layer_higher_inputs.", "fusion.own_conv."),
    ("multi_resolution_fusion.convolution_layer_lower_inputs.", "fusion.coarser_conv."),
    ("chained_residual_pooling.convolution_layer_1.", "pooling.conv."),
)

# (fork key prefix, RefineNet key prefix). Every parameter and buffer key of either model
# starts with exactly one prefix of its side, so a rename never depends on table order.
FORK_PREFIX_RENAMES = (
    # The fork wraps the ResNet stem as layer0 = Sequential(conv1, bn1, relu, maxpool).
    ("layer0.0.", "encoder.conv1."),
    ("layer0.1.", "encoder.bn1."),
    ("layer1.", "encoder.layer1."),
    ("layer2.", "encoder.layer2."),
    ("layer3.", "encoder.layer3."),
    ("layer4.", "encoder.layer4."),
    ("convolution_layer_1_dim_reduction.", "adapters.0."),
    ("convolution_layer_2_dim_reduction.", "adapters.1."),
    ("convolution_layer_3_dim_reduction.", "adapters.2."),
    ("convolution_layer_4_dim_reduction.", "adapters.3."),
    *(
        (f"refine_block_{block}.{fork_name}", f"refine_blocks.{block - 1}.{name}")
        for block in (1, 2, 3, 4)
        for fork_name, name in _REFINE_BLOCK_RENAMES
    ),
    ("residual_convolution_unit.convolution_layer_1.", "output_rcu.conv1."),
    ("residual_convolution_unit.convolution_layer_2.", "output_rcu.conv2."),
    ("final_layer.", "classifier."),
)

# The fork's training state stores its best validation loss as a numpy float64. Loading
# stays weights_only; these globals only rebuild float numpy scalars. The reconstructor is
# pickled as numpy.core.* by numpy 1 and numpy._core.* by numpy 2, so both names are allowed.
_numpy_scalar = np.float64(0).__reduce__()[0]
_NUMPY_SCALAR_GLOBALS = [
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
]

_KEYS_SHOWN = 3

_INVERSE_RENAMES = tuple((new, old) for old, new in FORK_PREFIX_RENAMES)


def _replace_prefix(key: str, renames: tuple[tuple[str, str], ...]) -> str | None:
    """``key`` with its prefix renamed by the first matching entry, or None if none matches."""
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def to_fork_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RefineNet's key names to the fork's (keys of neither are kept), e.g. to export weights."""
    return {_replace_prefix(key, _INVERSE_RENAMES) or key: value for key, value in state_dict.items()}


def _read_checkpoint(source: str | os.PathLike | Mapping) -> tuple[Mapping, str]:
    """The checkpoint's state dict and a name for it in error messages."""
    if isinstance(source, (str, os.PathLike)):
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
        name = os.fspath(source)
    else:
        checkpoint, name = source, "(in-memory state dict)"
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"fork checkpoint {name} holds a {type(checkpoint).__name__}, not a state dict")
    state_dict = checkpoint.get("model", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"fork checkpoint {name}: 'model' holds a {type(state_dict).__name__}, not a state dict")
    return state_dict, name


def _list(keys: list[str]) -> str:
    """The first few keys, comma separated."""
    shown = ", ".join(keys[:_KEYS_SHOWN])
    return shown + (", ..." if len(keys) > _KEYS_SHOWN else "")


def load_fork_checkpoint(model: RefineNet, source: str | os.PathLike | Mapping) -> None:
    """Load a fork checkpoint (a path, or an already loaded mapping) into ``model``, strictly.

    Raises ValueError naming the first mismatching keys (in the fork's names) when any key
    is missing or unexpected or any shape differs (shapes given as checkpoint vs model).
    """
    fork_state, name = _read_checkpoint(source)
    expected = model.state_dict()

    # Keys are reported in the fork's names: those are the names in the user's file.
    state_dict, fork_keys, unexpected = {}, {}, []
    for fork_key, value in fork_state.items():
        key = _replace_prefix(fork_key.removeprefix(_DATA_PARALLEL_PREFIX), FORK_PREFIX_RENAMES)
        if key in expected:
            state_dict[key], fork_keys[key] = value, fork_key
        else:
            unexpected.append(fork_key)
    missing = [_replace_prefix(key, _INVERSE_RENAMES) for key in expected if key not in state_dict]
    mismatched = [
        f"{fork_keys[key]}: {tuple(value.shape)} vs {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if value.shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_list(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_list(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch ({_list(mismatched)})")
    if problems:
        raise ValueError(
            f"fork checkpoint {name} does not match RefineNet({model.backbone_name}, "
            f"decoder_width={model.decoder_width}): " + ", ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)

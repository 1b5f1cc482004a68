"""Checkpoints of the public ``building_footprint_segmentation`` fork (0.2.4) <-> RefineNet.

The fork's ``ReFineNet`` has exactly the parameters of :class:`RefineNet` under other
names; ``FORK_PREFIX_RENAMES`` is the whole translation. Fork trainers save either the bare
state dict or their training state ``{"model": state_dict, "optimizer": ..., ...}``, with a
``module.`` prefix on every key when the model was wrapped in DataParallel. Reading those files, and
loading them strictly with mismatches named in the file's own key names, is `segcore.checkpoint`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

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

_INVERSE_RENAMES = tuple((new, old) for old, new in FORK_PREFIX_RENAMES)


def _replace_prefix(key: str, renames: tuple[tuple[str, str], ...]) -> str | None:
    """``key`` with its prefix renamed by the first matching entry, or None if none matches."""
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def to_fork_key(key: str) -> str:
    """A RefineNet key under the fork's name (a key of neither is kept)."""
    return _replace_prefix(key, _INVERSE_RENAMES) or key


def to_fork_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RefineNet's key names to the fork's, e.g. to export weights."""
    return {to_fork_key(key): value for key, value in state_dict.items()}


def from_fork_state_dict(fork_state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The fork's key names (``module.``-prefixed or not) to RefineNet's.

    Returns the renamed state dict and, for messages, each new key's name in the fork's file. Keys no
    rename applies to are kept under their own name, so a strict load names them as unexpected.
    """
    state_dict, names = {}, {}
    for fork_key, value in fork_state.items():
        bare = fork_key.removeprefix(_DATA_PARALLEL_PREFIX)
        key = _replace_prefix(bare, FORK_PREFIX_RENAMES) or bare
        state_dict[key], names[key] = value, fork_key
    return state_dict, names

"""RefineNet shapes and dtypes, the model registry, and fork-checkpoint loading (segcore.model)."""

import numpy as np
import pytest
import torch

from segcore.model import build_model, count_parameters
from segcore.model.fork import load_fork_checkpoint, to_fork_state_dict
from segcore.model.refinenet import RefineNet

# The fork's RefineNet-ResNet50 (decoder width 256) has exactly this many parameters.
FORK_RESNET50_PARAMETERS = 59_495_745


@pytest.mark.parametrize(
    ("backbone", "decoder_width"),
    [("resnet18", 32), ("resnet34", 32), ("resnet50", 32), ("resnet101", 16)],
)
def test_forward_gives_one_channel_float32_logits_at_input_size(backbone, decoder_width):
    model = RefineNet(backbone, decoder_width=decoder_width).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 96))
    assert logits.shape == (2, 1, 64, 96)
    assert logits.dtype == torch.float32


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = RefineNet("resnet18", decoder_width=16).eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(image)
        model = model.to(memory_format=torch.channels_last)
        logits = model(image.to(memory_format=torch.channels_last))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_runs_under_autocast():
    model = RefineNet("resnet18", decoder_width=16).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.rand(1, 3, 64, 64))
    assert logits.shape == (1, 1, 64, 64)
    assert torch.isfinite(logits.float()).all()


def test_input_size_not_a_multiple_of_32_raises_naming_the_size():
    model = RefineNet("resnet18", decoder_width=16).eval()
    with pytest.raises(ValueError, match=r"64x80 .*multiples of 32"):
        model(torch.rand(1, 3, 64, 80))


def test_resnet50_parameter_count_matches_the_fork():
    assert count_parameters(RefineNet("resnet50", decoder_width=256)) == FORK_RESNET50_PARAMETERS


def test_full_resnet50_at_384_gives_384_logits():
    model = RefineNet("resnet50", decoder_width=256).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 384, 384))
    assert logits.shape == (1, 1, 384, 384) and logits.dtype == torch.float32


def test_top_block_coarser_conv_is_kept_but_frozen():
    model = RefineNet("resnet18", decoder_width=16)
    unused = model.refine_blocks[3].fusion.coarser_conv
    assert all(not p.requires_grad for p in unused.parameters())
    assert all(p.requires_grad for name, p in model.named_parameters() if "refine_blocks.3.fusion.coarser" not in name)


def test_build_model_builds_refinenet():
    model = build_model("refinenet", "resnet18", decoder_width=16, pretrained=False)
    assert isinstance(model, RefineNet)
    assert model.backbone_name == "resnet18"


@pytest.mark.parametrize(
    ("arch", "backbone", "message"),
    [("unet", "resnet18", r"'unet'.*\['refinenet'\]"), ("refinenet", "vgg16", r"'vgg16'.*resnet101")],
)
def test_build_model_rejects_unknown_names(arch, backbone, message):
    with pytest.raises(ValueError, match=message):
        build_model(arch, backbone, decoder_width=16, pretrained=False)


def test_fork_checkpoint_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    source = RefineNet("resnet18", decoder_width=16).eval()
    fork_state = to_fork_state_dict(source.state_dict())
    assert "layer0.0.weight" in fork_state and "refine_block_4.chained_residual_pooling.convolution_layer_1.weight" in fork_state
    path = tmp_path / "fork.pt"
    # As the fork's trainer saves a DataParallel model.
    torch.save({"model": {f"module.{key}": value for key, value in fork_state.items()}, "step": 3}, path)

    torch.manual_seed(1)
    loaded = RefineNet("resnet18", decoder_width=16).eval()
    load_fork_checkpoint(loaded, path)

    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), source(image), rtol=0, atol=0)


def test_fork_training_state_with_numpy_loss_loads(tmp_path):
    # The fork's trainer saves its whole state; its best validation loss is a numpy float64.
    fork_state = to_fork_state_dict(RefineNet("resnet18", decoder_width=16).state_dict())
    path = tmp_path / "best.pt"
    torch.save({"model": fork_state, "optimizer": "NA", "step": 10, "bst_vld_loss": np.float64(0.25)}, path)
    load_fork_checkpoint(RefineNet("resnet18", decoder_width=16), path)


@pytest.fixture
def fork_state():
    """A valid fork-named state dict for RefineNet(resnet18, decoder_width=16)."""
    return to_fork_state_dict(RefineNet("resnet18", decoder_width=16).state_dict())


def test_missing_key_is_named(fork_state):
    del fork_state["final_layer.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys \(final_layer\.bias\)"):
        load_fork_checkpoint(RefineNet("resnet18", decoder_width=16), fork_state)


def test_unexpected_key_is_named(fork_state):
    state = dict(fork_state, extra_head_weight=torch.zeros(1))
    with pytest.raises(ValueError, match=r"1 unexpected \(extra_head_weight\)"):
        load_fork_checkpoint(RefineNet("resnet18", decoder_width=16), state)


def test_shape_mismatch_is_named(fork_state, tmp_path):
    state = dict(fork_state, **{"final_layer.bias": torch.zeros(2)})
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"ckpt\.pth .*1 shape mismatch \(final_layer\.bias: \(2,\) vs \(1,\)\)"):
        load_fork_checkpoint(RefineNet("resnet18", decoder_width=16), path)


def test_checkpoint_of_another_backbone_is_rejected(fork_state):
    model = RefineNet("resnet50", decoder_width=16)
    with pytest.raises(ValueError, match=r"RefineNet\(resnet50.*missing keys \(layer1\.0\.conv3\.weight") as error:
        load_fork_checkpoint(model, fork_state)
    assert "shape mismatch" in str(error.value)
    assert "\n" not in str(error.value)

"""RefineNet shapes and dtypes, and the model registry (segcore.model)."""

import pytest
import torch

from segcore.model import build_model, count_parameters
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

"""Same logits as the public fork's own ReFineNet on the same weights.

The fork (building-footprint-segmentation 0.2.4, a test extra) is the reference
implementation that segcore.model.RefineNet replaces; its users' checkpoints must load
through segcore.model.fork and predict exactly what they predicted before.
"""

import types

import pytest
import torch
import torchvision

from segcore.model.fork import load_fork_checkpoint
from segcore.model.refinenet import RefineNet

fork_refinenet = pytest.importorskip(
    "building_footprint_segmentation.seg.binary.models.refinenet",
    reason="the fork is the reference implementation (pip install building-footprint-segmentation==0.2.4)",
)


@pytest.fixture
def fork_models(monkeypatch):
    """The fork's ReFineNet constructor, with torchvision's current resnet API patched in.

    The fork calls ``models.resnet50(pretrained=...)``, which torchvision >= 0.24 rejects.
    """
    shim = types.SimpleNamespace(
        resnet34=lambda pretrained: torchvision.models.resnet34(weights=None),
        resnet50=lambda pretrained: torchvision.models.resnet50(weights=None),
    )
    monkeypatch.setattr(fork_refinenet, "models", shim)
    return fork_refinenet.ReFineNet


def randomize_batch_norm(model: torch.nn.Module) -> None:
    """Give every BatchNorm non-default statistics, so a mis-mapped one changes the logits."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.1, 0.1)
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("backbone", ["resnet50", "resnet34"])
def test_fork_checkpoint_gives_the_forks_logits(backbone, fork_models, tmp_path):
    torch.manual_seed(0)
    fork = fork_models(res_net_to_use=backbone, pre_trained_image_net=False).eval()
    with torch.no_grad():
        randomize_batch_norm(fork)
    path = tmp_path / f"fork_{backbone}.pt"
    # As the fork's trainer saves a DataParallel-wrapped model.
    torch.save({"model": {f"module.{key}": value for key, value in fork.state_dict().items()}}, path)

    model = RefineNet(backbone, decoder_width=256).eval()
    load_fork_checkpoint(model, path)

    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = fork(image)
        logits = model(image)
    print(f"{backbone}: max abs logit difference vs the fork {(logits - expected).abs().max().item():.3g}")
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)

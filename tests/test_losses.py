import pytest
import torch

from segcore.losses import build_loss


@pytest.mark.parametrize("name", ["bce", "bce_dice", "bce_jaccard"])
def test_losses_are_lower_for_better_predictions_and_have_gradients(name):
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    loss = build_loss(name, weight=1.0)
    good = (target * 2 - 1) * 4.0
    bad = -good
    logits = torch.zeros_like(target, requires_grad=True)
    assert loss(good, target) < loss(logits, target) < loss(bad, target)
    loss(logits, target).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_bce_dice_matches_formula():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    p = logits.sigmoid()
    dice = (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert build_loss("bce_dice", 0.5)(logits, target) == pytest.approx((bce + 0.5 * (1 - dice)).item())


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="focal"):
        build_loss("focal")

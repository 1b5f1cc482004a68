"""Training losses on logits: BCE, BCE + soft Dice (the fork's default), BCE + Jaccard (log-IoU)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BCEWithSoftDice(nn.Module):
    """BCE + weight * (1 - soft Dice), Dice over the whole batch with +1 smoothing, as in the fork."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        probs = logits.sigmoid()
        dice = (2.0 * (probs * target).sum() + 1.0) / (probs.sum() + target.sum() + 1.0)
        return F.binary_cross_entropy_with_logits(logits, target) + self.weight * (1.0 - dice)


class BCEWithJaccard(nn.Module):
    """BCE - weight * log(soft IoU): the log keeps the gradient strong when the overlap is small."""

    EPS = 1e-7

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        probs = logits.sigmoid()
        intersection = (probs * target).sum()
        union = probs.sum() + target.sum() - intersection
        log_iou = torch.log((intersection + self.EPS) / (union + self.EPS))
        return F.binary_cross_entropy_with_logits(logits, target) - self.weight * log_iou


class BCE(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def build_loss(name: str, weight: float = 1.0) -> nn.Module:
    """`name` is the config's train.loss: "bce", "bce_dice" or "bce_jaccard"."""
    if name == "bce":
        return BCE()
    if name == "bce_dice":
        return BCEWithSoftDice(weight)
    if name == "bce_jaccard":
        return BCEWithJaccard(weight)
    raise ValueError(f"loss {name!r} is not one of 'bce', 'bce_dice', 'bce_jaccard'")

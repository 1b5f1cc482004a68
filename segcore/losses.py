"""Training losses on logits: BCE, BCE + soft Dice (the fork's default), BCE + Jaccard (log-IoU)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _BCEWithOverlap(nn.Module):
    """BCE on the logits plus `weight` x an overlap term of the probabilities over the whole batch."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        return F.binary_cross_entropy_with_logits(logits, target) + self.weight * self.overlap(logits.sigmoid(), target)

    def overlap(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BCEWithSoftDice(_BCEWithOverlap):
    """BCE + weight * (1 - soft Dice), Dice over the whole batch with +1 smoothing, as in the fork."""

    def overlap(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = (2.0 * (probs * target).sum() + 1.0) / (probs.sum() + target.sum() + 1.0)
        return 1.0 - dice


class BCEWithJaccard(_BCEWithOverlap):
    """BCE - weight * log(soft IoU): the log keeps the gradient strong when the overlap is small."""

    EPS = 1e-7

    def overlap(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        intersection = (probs * target).sum()
        union = probs.sum() + target.sum() - intersection
        return -torch.log((intersection + self.EPS) / (union + self.EPS))


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

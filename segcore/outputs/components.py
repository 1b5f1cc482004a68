"""Counting a mosaic's buildings (4-connected components of the mask) while it is fed block by block."""
from __future__ import annotations

import cv2
import numpy as np

from segcore.raster.cog import MASK_BUILDING
from segcore.raster.grid import Block


class ComponentCounter:
    """Counts 4-connected building components of a mosaic fed block by block in row-major order.

    Each block is labelled alone (cv2); a small union-find joins labels that touch across the seam with
    the block above and the block to the left. Held state: one row of labels as wide as the mosaic, one
    column as tall as a block, and one parent entry per block-local component.
    """

    def __init__(self, width: int):
        self.parent: list[int] = [0]
        self.above = np.zeros(width, np.int64)  # labels of the last row fed, per column (0: background)
        self.left = np.zeros(0, np.int64)  # labels of the previous block's last column
        self.merges = 0

    def _find(self, label: int) -> int:
        while self.parent[label] != label:
            self.parent[label] = self.parent[self.parent[label]]
            label = self.parent[label]
        return label

    def _join(self, first: np.ndarray, second: np.ndarray) -> None:
        touching = (first > 0) & (second > 0)
        pairs = np.unique(np.stack([first[touching], second[touching]], 1), axis=0)
        for a, b in pairs:
            root_a, root_b = self._find(int(a)), self._find(int(b))
            if root_a != root_b:
                self.parent[max(root_a, root_b)] = min(root_a, root_b)
                self.merges += 1

    def add(self, mask: np.ndarray, block: Block) -> None:
        """Feed the core mask (1 = building) of `block`."""
        count, local = cv2.connectedComponents((mask == MASK_BUILDING).astype(np.uint8), connectivity=4,
                                                ltype=cv2.CV_32S)
        offset = len(self.parent) - 1
        self.parent.extend(range(offset + 1, offset + count))

        def edge(local_labels: np.ndarray) -> np.ndarray:  # only the edges meet other blocks: offset only those
            return np.where(local_labels > 0, local_labels.astype(np.int64) + offset, 0)

        columns = slice(block.col, block.col + block.width)
        if block.row > 0:
            self._join(self.above[columns], edge(local[0]))
        if block.col > 0:
            self._join(self.left, edge(local[:, 0]))
        self.above[columns] = edge(local[-1])
        self.left = edge(local[:, -1])

    @property
    def count(self) -> int:
        return len(self.parent) - 1 - self.merges

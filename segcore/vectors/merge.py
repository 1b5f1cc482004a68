"""Buildings cut by block seams, joined as blocks arrive: the same buildings as polygonizing the whole mask.

Blocks may arrive in any order. A seam is resolved once the blocks on both sides have arrived: fragments with
building pixels facing each other across it are joined (union-find). A group of joined fragments is a whole
building once every seam its fragments touch is resolved; it is then unioned (exact: integer pixel corners)
and handed out, and forgotten.

Held state: the fragments of unfinished buildings and one edge array per seam whose second block has not
arrived. Fed in row-major order (the order of `plan_blocks`), that is about one row of blocks' seams and
fragments, whatever the mosaic's size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon

from segcore.vectors.polygonize import BlockVectors, Buildings, SeamKey, geometry_array


@dataclass
class _Fragment:
    geometry: Polygon
    id: int
    pixels: int
    probability_sum: int
    block: int


class FragmentMerger:
    """Feed every block's `BlockVectors` to `add`; each call returns the buildings finished by it."""

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}
        self._members: dict[int, list[int]] = {}  # root -> fragments of its group
        self._open: dict[int, int] = {}  # root -> (fragment, seam) contacts of its group not yet resolved
        self._fragments: dict[int, _Fragment] = {}
        self._waiting: dict[SeamKey, np.ndarray] = {}  # seam -> fragment numbers along the side that arrived
        self._next = 0
        self._with_probability: bool | None = None

    def _find(self, fragment: int) -> int:
        root = fragment
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[fragment] != root:  # path compression
            self._parent[fragment], fragment = root, self._parent[fragment]
        return root

    def _union(self, a: int, b: int) -> None:
        root_a, root_b = self._find(a), self._find(b)
        if root_a == root_b:
            return
        if len(self._members[root_a]) < len(self._members[root_b]):
            root_a, root_b = root_b, root_a
        self._parent[root_b] = root_a
        self._members[root_a].extend(self._members.pop(root_b))
        self._open[root_a] += self._open.pop(root_b)

    def add(self, vectors: BlockVectors) -> Buildings:
        """Take one block; return its complete buildings and the merged buildings it finished."""
        with_probability = vectors.complete.probability_sum is not None
        if self._with_probability is None:
            self._with_probability = with_probability
        elif with_probability != self._with_probability:
            raise ValueError(f"block {vectors.block.index}: blocks with and without probabilities")
        fragments = vectors.fragments
        numbers = np.arange(self._next, self._next + len(fragments))
        self._next += len(fragments)
        contacts = np.zeros(len(fragments), np.int64)
        for edge in vectors.edges.values():
            contacts[np.unique(edge[edge >= 0])] += 1
        probability = fragments.probability_sum
        for k, number in enumerate(numbers.tolist()):
            self._parent[number] = number
            self._members[number] = [number]
            self._open[number] = int(contacts[k])
            self._fragments[number] = _Fragment(fragments.geometry[k], int(fragments.id[k]), int(fragments.pixels[k]),
                                                int(probability[k]) if probability is not None else 0,
                                                int(fragments.block[k]))
        touched: list[int] = numbers.tolist()
        for side, key in vectors.seams().items():
            edge = vectors.edges[side]
            along = np.full(len(edge), -1, np.int64)
            along[edge >= 0] = numbers[edge[edge >= 0]]
            across = self._waiting.pop(key, None)
            if across is None:
                self._waiting[key] = along
                continue
            if len(across) != len(along):
                raise ValueError(f"block {vectors.block.index}: its {side} edge is {len(along)} px but the block "
                                 f"across it has {len(across)}: blocks must come from one grid (plan_blocks)")
            facing = (along >= 0) & (across >= 0)
            for a, b in np.unique(np.stack([along[facing], across[facing]], 1), axis=0).tolist():
                self._union(a, b)
            for number in np.union1d(np.unique(along[along >= 0]), np.unique(across[across >= 0])).tolist():
                self._open[self._find(number)] -= 1
                touched.append(number)
        finished = [root for root in {self._find(n) for n in touched} if self._open[root] == 0]
        return Buildings.concat([vectors.complete, self._pop_groups(finished)])

    def _pop_groups(self, roots: list[int]) -> Buildings:
        geometry, ids, pixels, probability, blocks = [], [], [], [], []
        for root in sorted(roots):
            numbers = self._members.pop(root)
            members = [self._fragments.pop(n) for n in numbers]
            for number in numbers:
                del self._parent[number]
            del self._open[root]
            union = shapely.union_all([m.geometry for m in members])
            if not isinstance(union, Polygon):  # fragments join only along shared pixel edges
                raise RuntimeError(f"fragments joined into a {union.geom_type}")
            first = min(members, key=lambda m: m.id)
            # Seam vertices in the middle of straight edges go; vertex order as polygonize_block's.
            geometry.append(shapely.normalize(shapely.simplify(union, 0)))
            ids.append(first.id)
            pixels.append(sum(m.pixels for m in members))
            probability.append(sum(m.probability_sum for m in members))
            blocks.append(first.block)
        return Buildings(geometry_array(geometry), np.array(ids, np.int64),
                         np.array(pixels, np.int64), np.array(probability, np.int64) if self._with_probability
                         else None, np.array(blocks, np.int64))

    def pending_bounds(self) -> np.ndarray:
        """(n, 4) xmin, ymin, xmax, ymax (pixels) of the fragments of buildings not finished yet."""
        if not self._fragments:
            return np.zeros((0, 4))
        return shapely.bounds(geometry_array([f.geometry for f in self._fragments.values()]))

    def finish(self) -> None:
        """Check that nothing is left: every seam met its neighbour, every building was handed out."""
        if self._waiting or self._fragments:
            raise ValueError(f"{len(self._waiting)} block seam(s) never met the block across them and "
                             f"{len(self._fragments)} fragment(s) are unfinished: add every block of the mosaic")

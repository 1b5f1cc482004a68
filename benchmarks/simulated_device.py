"""A simulated accelerator for benchmarks of the segment data path: NOT a model.

`SimulatedDevice` stands where the model runs inside the real inference actors (through run_segment's
model_factory, which no config can reach). Each forward pass holds the actor for `seconds_per_tile` x batch,
as a GPU of that rate would, but sleeps instead of computing, so the GIL is free and no CPU is used: the CPU
that the pipeline spends around it is then all data path. Its logits come from the input (bright pixels are
buildings, sampled at 1/8 resolution), so masks, polygons, previews and metrics have real content.

Each forward pass appends "start end tiles" (wall-clock seconds) to `busy_log` when one is given, so that a
benchmark can measure how busy the device was kept.
"""
from __future__ import annotations

import functools
import os
import threading
import time

import torch
import torch.nn.functional as F

COARSE = 8  # logits are computed on every 8th pixel of every 8th row and upsampled: next to no CPU


class SimulatedDevice(torch.nn.Module):
    def __init__(self, seconds_per_tile: float, busy_log: str | None = None):
        super().__init__()
        self.seconds_per_tile, self.busy_log = seconds_per_tile, busy_log
        # One pass at a time, as on one GPU, however many of the actor's threads (segment.blocks_per_actor) call.
        self.one_pass = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.one_pass:
            started = time.time()
            coarse = x[:, :3, ::COARSE, ::COARSE].float().mean(dim=1, keepdim=True)
            logits = F.interpolate(40.0 * (coarse - 0.5), size=x.shape[-2:], mode="nearest")
            remaining = started + self.seconds_per_tile * x.shape[0] - time.time()
            if remaining > 0:
                time.sleep(remaining)  # releases the GIL: the actor's other threads run meanwhile, as beside a GPU
            finished = time.time()
        if self.busy_log:
            # One short append per pass: lines from several actors interleave whole.
            with open(self.busy_log, "a") as log:
                log.write(f"{started:.6f} {finished:.6f} {x.shape[0]}\n")
        return logits

    @staticmethod
    def factory(seconds_per_tile: float, busy_log: str | os.PathLike | None = None):
        """A model_factory for run_segment."""
        return functools.partial(SimulatedDevice, seconds_per_tile, str(busy_log) if busy_log else None)


def read_busy_log(path: str | os.PathLike) -> list[tuple[float, float, int]]:
    with open(path) as log:
        return sorted((float(a), float(b), int(n)) for a, b, n in (line.split() for line in log if line.strip()))


def _steady(passes: list[tuple[float, float, int]], skip: float) -> tuple[list[tuple[float, float, int]], float]:
    """The passes without the first and last `skip` share of them (start-up and tail), and their span in s."""
    cut = int(len(passes) * skip)
    kept = passes[cut:len(passes) - cut] if cut else passes
    return kept, kept[-1][1] - kept[0][0]


def busy_fraction(passes: list[tuple[float, float, int]], skip: float = 0.0) -> float:
    """Device-busy time over the span from the first pass's start to the last pass's end, leaving out the first
    and last `skip` share of the passes for a steady-state figure."""
    kept, span = _steady(passes, skip)
    return sum(end - start for start, end, _ in kept) / span if span > 0 else 0.0


def tiles_per_s(passes: list[tuple[float, float, int]], skip: float = 0.0) -> float:
    """Tiles the device was given per second over the same span."""
    kept, span = _steady(passes, skip)
    return sum(tiles for _, _, tiles in kept) / span if span > 0 else 0.0

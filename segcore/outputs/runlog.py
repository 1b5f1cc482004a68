"""What a segment run did, as it goes: per mosaic, the blocks and tiles computed and when its inference and its
assembly ran; the CPU-seconds ledger of every stage over every process; a progress line; summary.json's body.

Times are seconds since the run started (planning included). Ray-free: the segment pipeline's driver feeds it.
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TextIO

PROGRESS_EVERY_S = 30.0  # between progress lines when the output is a log, not a terminal


@dataclass
class MosaicRun:
    key: str
    blocks_total: int
    blocks_todo: int  # blocks this run computes (the others were done by an earlier run)
    # blocks, tiles, pixels (ints) and seconds (the inference actors')
    counts: defaultdict[str, float] = field(default_factory=lambda: defaultdict(int))
    inference: list[float] = field(default_factory=list)  # [first block started, last block finished]
    assembly: list[float] = field(default_factory=list)  # [started, finished]

    def metrics(self, threshold: float) -> dict:
        """What this run did for the mosaic, for its metrics.json."""
        seconds, tiles = self.counts["seconds"], self.counts["tiles"]
        return dict(key=self.key, threshold=threshold,
                    blocks=dict(total=self.blocks_total, computed=self.counts["blocks"],
                                reused=self.blocks_total - self.counts["blocks"]),
                    tiles_computed_this_run=tiles, seconds=round(seconds, 3),
                    tiles_per_s=round(tiles / seconds, 3) if seconds else None,
                    megapixels_per_s=round(self.counts["pixels"] / 1e6 / seconds, 4) if seconds else None)

    def timeline(self) -> dict:
        return {name: [round(t, 3) for t in span] for name, span in (("inference", self.inference),
                                                                    ("assembly", self.assembly)) if span}


class RunLog:
    def __init__(self, mosaics: dict[int, MosaicRun], started_at: float, out: TextIO = sys.stdout):
        self.mosaics, self.started_at, self.out = mosaics, started_at, out
        self.ledger: defaultdict[str, float] = defaultdict(float)  # CPU seconds by stage
        self.tty = out.isatty()
        self._last_line = time.time()

    def now(self) -> float:
        return time.time() - self.started_at

    def total(self, key: str) -> float:
        """A count (blocks, tiles, pixels, seconds) summed over the mosaics."""
        return sum(run.counts[key] for run in self.mosaics.values())

    def block_done(self, number: int, row: dict, stages: tuple[str, ...]) -> None:
        """A computed block's row from the stream: its counts, its stages' CPU seconds, its times."""
        run = self.mosaics[number]
        for key, value in dict(blocks=1, tiles=int(row["tiles"]), pixels=int(row["pixels"]),
                               seconds=float(row["seconds"])).items():
            run.counts[key] += value
        for stage in stages:
            self.ledger[stage] += float(row[f"cpu_{stage}"])
        started, finished = float(row["started_at"]) - self.started_at, float(row["finished_at"]) - self.started_at
        run.inference = [min(run.inference[0], started), max(run.inference[1], finished)] if run.inference else \
            [started, finished]
        self._progress(run)

    def assembled(self, number: int, metrics: dict) -> None:
        """A mosaic's assembly result: its times move to the timeline (metrics.json has none), its CPU to the
        ledger."""
        started, finished = metrics.pop("assembly_started_at"), metrics.pop("assembly_finished_at")
        self.mosaics[number].assembly = [started - self.started_at, finished - self.started_at]
        for stage, seconds in metrics["assembly_cpu_s"].items():
            self.ledger[stage] += seconds

    def _progress(self, run: MosaicRun) -> None:
        """One line on where the run is: rewritten in place on a terminal, every PROGRESS_EVERY_S in a log."""
        now = time.time()
        if not self.tty and now - self._last_line < PROGRESS_EVERY_S:
            return
        self._last_line = now
        done, todo = self.total("blocks"), sum(m.blocks_todo for m in self.mosaics.values())
        tiles, elapsed = self.total("tiles"), self.now()
        eta = elapsed / done * (todo - done) if done else float("nan")
        line = (f"{done}/{todo} blocks ({run.key}: {run.counts['blocks']}/{run.blocks_todo}), "
                f"{tiles / max(elapsed, 1e-9):.1f} tiles/s, ETA {_duration(eta)}")
        self.out.write(f"\r{line}\033[K" if self.tty else f"{line}\n")
        self.out.flush()

    def end_progress(self) -> None:
        if self.tty:
            self.out.write("\n")


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing done yet
        return "?"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"

"""The segment pipeline's assembly: mosaics' outputs built from their block files while the stream goes on.

`Assembler` actors (segment.assemblers of them, segment.cpus_per_assembly each) hold the assemblies of several
mosaics at once. The driver hands a mosaic to the least busy one when its first block comes out of the stream,
passes on each written block as it comes (`ready`), and asks for the outputs once the last one has (`finish`).
So a mosaic is assembled beside its own inference and the next mosaics', and only its last blocks and the
COG's finish remain when the stream ends.

A mosaic with nothing left to compute (an earlier run wrote its blocks) is assembled by a one-off Ray task
instead, which hands its CPUs back when done: an assembler started before the stream could hold CPUs that
Ray Data's pools wait for. The same task assembles again, from its block files, each mosaic whose assembler
died (Ray restarts it empty) before publishing it.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import ray
from ray.actor import ActorHandle

from segcore.config import Config
from segcore.errors import InputError
from segcore.outputs.assemble import MosaicAssembly, MosaicOutputs, assemble_mosaic, remove_outputs
from segcore.storage import describe_error


class LostAssembly(Exception):
    """The assembler restarted since the mosaic was handed to it: its assembly went with the old process."""


class Assembler:
    """Ray actor: assemblies of mosaics keyed by the driver's mosaic number. A failure in one mosaic's blocks is
    kept and raised by its `finish`; the others go on."""

    def __init__(self) -> None:
        self.assemblies: dict[int, MosaicAssembly] = {}
        self.failures: dict[int, Exception] = {}

    def begin(self, number: int, mosaic: MosaicOutputs, cfg: Config, ready: list[int]) -> None:
        try:
            self.assemblies[number] = MosaicAssembly(mosaic, cfg)
        except Exception as exc:
            self.failures[number] = exc
        self.ready(number, ready)

    def ready(self, number: int, indexes: list[int]) -> None:
        assembly = self.assemblies.get(number)
        if assembly is None:  # failed already, or begun before a restart
            return
        try:
            assembly.add_ready(indexes)
        except Exception as exc:
            self.failures[number] = exc
            self.abandon(number)

    def finish(self, number: int, run: dict) -> dict:
        if number in self.failures:
            raise self.failures.pop(number)
        assembly = self.assemblies.pop(number, None)
        if assembly is None:
            raise LostAssembly(number)
        failed = True
        try:
            metrics = assembly.publish(run)
            failed = False
            return metrics
        finally:
            assembly.close(failed)

    def abandon(self, number: int) -> None:
        """Drop a mosaic's assembly (its blocks failed, or the stream did): temporary files go, nothing is
        published."""
        assembly = self.assemblies.pop(number, None)
        if assembly is not None:
            assembly.close(failed=True)


@dataclass
class _Finishing:
    number: int
    mosaic: MosaicOutputs
    run: dict
    streamed: bool  # by an assembler, which may be lost; else by a one-off task


class Assemblies:
    """The driver's side: assigns mosaics to assemblers, passes their blocks on, collects their outputs.

    `outputs(number)` gives a mosaic's MosaicOutputs; `done(number, metrics)` and `failed(number, message)` are
    called as each mosaic's outputs are published or its assembly fails.
    """

    def __init__(self, cfg: Config, count: int, outputs: Callable[[int], MosaicOutputs],
                 done: Callable[[int, dict], None], failed: Callable[[int, str], None]):
        self.cfg, self.outputs, self.done, self.failed = cfg, outputs, done, failed
        cpus = cfg.segment.cpus_per_assembly
        self.cls = ray.remote(Assembler).options(num_cpus=cpus, max_restarts=-1)
        self.task = ray.remote(assemble_mosaic).options(num_cpus=cpus)
        self.count = count
        self.actors: list[ActorHandle] = []  # see start()
        self.owner: dict[int, ActorHandle] = {}  # mosaic number -> its assembler, until it is finished
        self.finishing: dict[ray.ObjectRef, _Finishing] = {}

    def start(self) -> None:
        """Start the assemblers now, so that the first mosaic's assembly does not wait for a process to start.
        Only where the CPUs hold them beside the first actor of each of the stream's pools: an assembler holding
        CPUs that an inference actor waits for would stop the stream for good. Otherwise each starts when a
        mosaic needs it, which is after its first block has come through every pool."""
        while len(self.actors) < self.count:
            self.actors.append(cast(ActorHandle, self.cls.remote()))

    def _least_busy(self) -> ActorHandle:
        """The assembler with the fewest mosaics in hand; a new one while none is idle and the count allows."""
        load = {id(actor): 0 for actor in self.actors}
        for actor in self.owner.values():
            load[id(actor)] += 1
        if 0 not in load.values() and len(self.actors) < self.count:
            self.actors.append(cast(ActorHandle, self.cls.remote()))
            return self.actors[-1]
        return min(self.actors, key=lambda actor: load[id(actor)])

    def ready(self, number: int, indexes: list[int], written_before: Callable[[], list[int]]) -> None:
        """Blocks of mosaic `number` whose files this run wrote; `written_before()`, asked the first time, lists
        those an earlier run wrote."""
        if number not in self.owner:
            self.owner[number] = self._least_busy()
            self.owner[number].begin.remote(number, self.outputs(number), self.cfg,
                                            [*written_before(), *indexes])
        else:
            self.owner[number].ready.remote(number, indexes)

    def finish(self, number: int, run: dict) -> None:
        """Publish mosaic `number` (every block written): streamed if an assembler has it, else by a task."""
        mosaic, streamed = self.outputs(number), number in self.owner
        ref = self.owner.pop(number).finish.remote(number, run) if streamed else \
            self.task.remote(mosaic, self.cfg, run)
        self.finishing[ref] = _Finishing(number, mosaic, run, streamed)

    def abandon(self, number: int) -> None:
        if number in self.owner:
            self.owner.pop(number).abandon.remote(number)

    def collect(self, wait: bool = False) -> None:
        """Report the finished mosaics; with `wait`, every one still running."""
        while self.finishing:
            done, _ = ray.wait(list(self.finishing), num_returns=len(self.finishing) if wait else 1,
                               timeout=None if wait else 0)
            if not done:
                return
            for ref in done:
                self._result(ref, self.finishing.pop(ref))

    def _result(self, ref: ray.ObjectRef, job: _Finishing) -> None:
        try:
            self.done(job.number, ray.get(ref))
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
            if job.streamed and (isinstance(cause, LostAssembly) or isinstance(exc, ray.exceptions.RayActorError)):
                print(f"note: {job.mosaic.out}: its assembler was lost; assembling it again from its block files",
                      file=sys.stderr, flush=True)
                self.finishing[self.task.remote(job.mosaic, self.cfg, job.run)] = _Finishing(
                    job.number, job.mosaic, job.run, streamed=False)
                return
            message = str(cause) if isinstance(cause, InputError) else describe_error(
                job.mosaic.out, cause if isinstance(cause, BaseException) else exc)
            # Outputs published before the failure (prob.tif, footprints, ...) are a partial set. Removing them
            # may fail too when the output store is what failed: the next run deletes them then.
            with contextlib.suppress(Exception):
                remove_outputs(job.mosaic, self.cfg)
            self.failed(job.number, message)

    def close(self) -> None:
        """End the assemblers once every mosaic is collected or abandoned (their temporary files removed), so that
        their CPUs return to the cluster now."""
        for number in list(self.owner):
            self.abandon(number)
        for actor in self.actors:
            with contextlib.suppress(ray.exceptions.RayActorError):
                ray.get(actor.abandon.remote(-1))  # after every call before it
            ray.kill(actor)
        self.actors = []

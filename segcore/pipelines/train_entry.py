"""What Ray Train's own actors unpickle: the per-worker entry point and the split of the datasets.

A TorchTrainer hands its loop function to its controller actor and its DataConfig to its dataset actor, and
unpickling either imports the module that defines it. Defined here, beside nothing heavier than `ray.train`,
they spare those actors the training code's imports (torchvision and the model: seconds of start-up and
hundreds of MB of memory each); only the workers import that code.
"""
from __future__ import annotations

from ray.train import DataConfig


def train_worker(config: dict) -> None:
    """Ray Train's function on each worker: `segcore.pipelines.train.train_loop`, imported there only."""
    from segcore.pipelines.train import train_loop

    train_loop(config)


class ExactEvalSplit(DataConfig):
    """Validation and test splits go to the workers unequally, so no row is ever dropped and metrics summed
    over workers equal metrics over the whole split, whatever the worker count. (Training patches are not
    Ray Train datasets: each worker reads its own `raytrain.epoch_shard`, reproducibly.)"""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output: list[dict] = [{} for _ in range(world_size)]
        for name, dataset in datasets.items():
            dataset = dataset.copy(dataset)
            dataset.set_name(name)
            dataset.context.execution_options = self._resolve_execution_options(name)
            for rank, split in enumerate(dataset.streaming_split(world_size, equal=False)):
                output[rank][name] = split
        return output

"""Ray orchestration of the jobs: the only part of segcore that imports ray.

- `prepare`: a Ray task per mosaic cuts patches.   - `train`, `evaluate`: Ray Train / Ray Data on patches.
- `segment`: a Ray Data stream of blocks (`blocks`: its CPU stages) and the assemblers beside it (`assembly`).
"""
from collections.abc import Iterable

import ray

from segcore.config import ConfigError, StorageConfig
from segcore.storage import is_remote


def init_ray(storage: StorageConfig, paths: Iterable[tuple[str, str]]) -> None:
    """Join the running cluster (under `ray job submit`, or with RAY_ADDRESS) or start a local Ray, unless the
    caller already did. The pipelines call it once their inputs are checked: bad input costs no Ray start.

    On a cluster of several nodes, each local path of `paths` ((what it is, path) pairs) is refused unless
    `storage.shared_fs` declares local paths shared: the work on other nodes could not see it.
    """
    if not ray.is_initialized():
        ray.init()
    if storage.shared_fs:
        return
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    if nodes < 2:
        return
    for what, path in paths:
        if path and not is_remote(path):
            raise ConfigError(f"{what} {path} is a local path, but this Ray cluster has {nodes} nodes that do not "
                              "share this machine's disk: use an s3:// path, or set storage.shared_fs=true if every "
                              "node mounts it at the same path")

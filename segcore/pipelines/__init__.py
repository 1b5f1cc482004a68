"""Ray orchestration of the jobs: the only part of segcore that imports ray.

- `prepare`: a Ray task per mosaic cuts patches.   - `train`, `evaluate`: Ray Train / Ray Data on patches.
- `segment`: a Ray Data stream of blocks (`blocks`: its CPU stages) and an assembly task per mosaic.
"""
import ray


def init_ray() -> None:
    """Join the running cluster (under `ray job submit`, or with RAY_ADDRESS) or start a local Ray, unless the
    caller already did. The pipelines call it once their inputs are checked: bad input costs no Ray start."""
    if not ray.is_initialized():
        ray.init()

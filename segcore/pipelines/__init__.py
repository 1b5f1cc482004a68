"""Ray orchestration of the jobs: the only part of segcore that imports ray."""

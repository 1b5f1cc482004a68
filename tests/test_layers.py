"""The package's layers, read from its import statements: each layer imports only those below it.

    jobs/, segcore.cli          command lines
    segcore.pipelines           Ray (the only layer that imports it)
    segcore.outputs             a mosaic's outputs from its block files
    segcore.inference, labels, vectors, training, checkpoint, ...   Ray-free library
    segcore.raster              raster I/O only: config, storage and errors below it, nothing else of segcore
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SEGCORE = REPO / "segcore"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (lazy imports in functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(path): imports(path) for path in sorted(SEGCORE.rglob("*.py"))}


def segcore_imports(module: str) -> set[str]:
    return {name for name in MODULES[module] if name.startswith("segcore.") and name in MODULES}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("segcore.raster")))
def test_raster_imports_nothing_of_segcore_above_it(module):
    allowed = ("segcore.raster", "segcore.config", "segcore.storage", "segcore.errors")
    assert {name for name in segcore_imports(module) if not name.startswith(allowed)} == set()


def test_only_the_pipelines_import_ray():
    importers = {module for module, names in MODULES.items() if any(n == "ray" or n.startswith("ray.") for n in names)}
    assert importers and all(module.startswith("segcore.pipelines") for module in importers), importers


@pytest.mark.parametrize("layer, above", [
    ("segcore.outputs", ("segcore.pipelines", "segcore.cli")),
    ("segcore.vectors", ("segcore.pipelines", "segcore.cli", "segcore.outputs", "segcore.inference")),
    ("segcore.inference", ("segcore.pipelines", "segcore.cli", "segcore.outputs", "segcore.labels")),
    ("segcore.labels", ("segcore.pipelines", "segcore.cli", "segcore.outputs", "segcore.inference")),
    ("segcore.checkpoint", ("segcore.pipelines", "segcore.cli", "segcore.outputs", "segcore.training")),
    ("segcore.model", ("segcore.pipelines", "segcore.cli", "segcore.outputs", "segcore.checkpoint")),
])
def test_no_import_runs_up_the_layers(layer, above):
    offenders = {(module, name) for module in MODULES if module.startswith(layer)
                 for name in segcore_imports(module) if name.startswith(above)}
    assert offenders == set()


def test_the_cpu_stages_of_the_pipelines_stay_torch_free():
    """Their Ray workers start in seconds only without torch (and torchvision's torch._dynamo)."""
    for module in ("segcore.pipelines.blocks", "segcore.pipelines.assembly", "segcore.data.patches",
                   "segcore.outputs.blockfile", "segcore.outputs.preview", "segcore.raster.io"):
        seen, todo = set(), [module]
        while todo:
            current = todo.pop()
            if current in seen or current not in MODULES:
                continue
            seen.add(current)
            assert not any(n == "torch" or n.startswith("torch.") for n in MODULES[current]), (module, current)
            todo += [name for name in segcore_imports(current)]


def test_what_ray_trains_own_actors_unpickle_imports_no_torch(tmp_path):
    """The trainer's controller and dataset actors unpickle its loop function and DataConfig, importing the
    modules that define them: those come from train_entry, which starts without torch or the model."""
    from segcore.config import load_config
    from segcore.pipelines.raytrain import make_trainer

    trainer = make_trainer({}, load_config(), {}, "layers", str(tmp_path))
    assert {type(trainer.data_config).__module__, trainer.train_loop_per_worker.__module__} == \
        {"segcore.pipelines.train_entry"}
    code = ("import sys, segcore.pipelines.train_entry; "
            "assert not {'torch', 'torchvision', 'segcore.model'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)

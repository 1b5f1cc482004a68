"""Bad checkpoints stop segment, evaluate and train --resume in one line before any worker starts, and nothing in
the source tree unpickles anything but plain data."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch

from segcore.checkpoint import Checkpoint, TrainingState
from segcore.config import InputConfig, ModelConfig
from segcore.errors import InputError
from segcore.model import build_model
from segcore.pipelines.segment import plan_segment
from tests import inputs as fi
from tests import jobs
from tests.conftest import REPO
from tests.faults.common import MARKER, seg_config
from tests.helpers import one_line_error, small_config
from tests.inputs import write_patch_set


def _other_backbone(path: Path, marker: Path) -> tuple[Path, list[str]]:
    fi.tiny_checkpoint(path, stored_backbone="resnet34")  # resnet18 weights, labelled resnet34
    return path, ["weights do not match refinenet(resnet34, decoder_width=16)", "missing keys", "encoder.layer1.2."]


BAD_CHECKPOINTS = {
    "other backbone": _other_backbone,
    "random bytes": lambda p, m: (fi.random_bytes(p), ["refused: not a plain-data checkpoint", "Unsupported operand"]),
    "empty file": lambda p, m: (fi.empty_file(p), ["not a PyTorch checkpoint (empty file)"]),
    "pickled code": lambda p, m: (fi.malicious_checkpoint(p, m), ["refused: not a plain-data checkpoint",
                                                                  "GLOBAL posix.system"]),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_stops_segment_evaluate_and_resume_in_one_line(case, good, tmp_path):
    """Segment, evaluate and train --resume all refuse it on the driver, before any worker starts."""
    from segcore.pipelines.evaluate import run_evaluation
    from segcore.pipelines.train import run_training

    marker = tmp_path / MARKER
    path, words = BAD_CHECKPOINTS[case](tmp_path / "model.pt", marker)
    with pytest.raises(InputError) as info:
        plan_segment([str(good)], str(path), str(tmp_path / "out"), seg_config())
    one_line_error(info.value, f"{path}: ", *words)
    assert not (tmp_path / "out").exists()

    data = write_patch_set(tmp_path / "data", counts=(("train", 2), ("val", 2)))
    with pytest.raises(InputError) as info:
        run_evaluation(small_config(data, tmp_path / "eval"), str(path), str(data), "val")
    one_line_error(info.value, f"{path}: ", *words)

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.pt"
    if case == "other backbone":  # a run of resnet18, resumed with a config that says resnet34
        torch.manual_seed(0)
        model_cfg = ModelConfig(backbone="resnet18", decoder_width=16)
        Checkpoint(model_cfg, InputConfig(), build_model("refinenet", "resnet18", 16, False).state_dict(), epoch=1,
                   training=TrainingState(optimizer={}, scheduler={}, config={}, progress={})).save(str(last))
        cfg = small_config(data, run, "model.backbone=resnet34")
    else:
        shutil.copy(path, last)
        cfg = small_config(data, run)
    with pytest.raises(InputError) as info:
        run_training(cfg, resume=str(run))
    one_line_error(info.value, f"{last}: ", *words)
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "last.pt"]  # nothing written
    assert not marker.exists(), "unpickling ran the payload"


def test_malicious_checkpoint_cli_exits_2_and_runs_no_code(good, tmp_path):
    marker = tmp_path / MARKER
    bad = fi.malicious_checkpoint(tmp_path / "model.pt", marker)
    result = jobs.run_job("segment", "--input", good, "--checkpoint", bad, "--output", tmp_path / "out",
                        env=jobs.job_env(tmp_path / "ray"), timeout=180)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: {bad}: refused: not a plain-data checkpoint (weights_only load "
                                          "failed: Trying to load unsupported GLOBAL posix.system whose module posix "
                                          "is blocked.)"]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_only_weights_only_torch_load_in_the_source_tree():
    """Every torch.load outside the tests passes a literal weights_only=True, and nothing unpickles directly."""
    loads, offenders = 0, []
    for folder in ("segcore", "jobs", "scripts", "benchmarks", "cluster"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization", "pickle"):
                    offenders += [f"{path}:{node.lineno}: from {node.module} import {a.name}" for a in node.names
                                  if a.name in ("load", "loads", "Unpickler")]
                if not isinstance(node, ast.Call):
                    continue
                name = ast.unparse(node.func)
                if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
                    offenders.append(f"{path}:{node.lineno}: {name}")
                if name in ("np.load", "numpy.load"):  # arrays only: allow_pickle must stay off
                    flag = {kw.arg: kw.value for kw in node.keywords}.get("allow_pickle")
                    if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                        offenders.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
                if name in ("torch.load", "torch.serialization.load"):
                    loads += 1
                    flag = {kw.arg: kw.value for kw in node.keywords}.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        offenders.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert loads == 1 and not offenders, offenders  # one reader: segcore.checkpoint.read_checkpoint


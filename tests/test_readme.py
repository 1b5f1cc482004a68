"""The README's command sequence runs as written (prepare, train with dev.yaml, resume, evaluate without
--config, segment, the model smoke run), on a 1024^2 city instead of 4096^2 and with fewer epochs, so the
README cannot drift from the code. Each command is a subprocess in a scratch working directory, joining the
session's local Ray."""
from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import rasterio

from segcore.checkpoint import read_checkpoint
from tests import jobs
from tests.conftest import REPO


def readme_commands() -> list[list[str]]:
    """The commands of the first bash block of the README's "Commands" section, continuation lines joined."""
    section = (REPO / "README.md").read_text().split("\n## Commands\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


def runnable(command: list[str]) -> list[str]:
    """As a user in the checkout would run it, from another directory: the venv's Python, the repo's
    jobs and configs, a 1024-pixel city, and training shortened to 1 epoch resumed to 2 (not 10 and 12), on
    one worker (two-worker training is tests/pipelines/test_train.py's; the resume keeps the run's one)."""
    out = [sys.executable if word == ".venv/bin/python" else word for word in command]
    out = [str(REPO / word) if word.startswith(("jobs/", "configs/")) else word for word in out]
    out = [{"4096": "1024", "train.epochs=12": "train.epochs=2"}.get(word, word) for word in out]
    if "jobs/train.py" in command and "--resume" not in command:
        out += ["--set", "train.epochs=1", "--set", "train.num_workers=1", "--set", "train.cpus_per_worker=1"]
    return out


def succeeded(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.args, result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


def test_the_readme_sequence_runs_as_written(ray_local, tmp_path):
    commands = readme_commands()
    scripts = [next((w for w in c if w.endswith(".py") or w.startswith("segcore.")), c[1]) for c in commands]
    assert scripts == ["segcore.synth", "jobs/prepare.py", "jobs/train.py", "jobs/train.py", "jobs/evaluate.py",
                       "jobs/segment.py", "segcore.model"], scripts
    # The jobs join the session's Ray (RAY_ADDRESS), as they would join a running cluster. Each command waits
    # for the one before, except the last three: they only read what the others wrote, so they run side by side.
    env = jobs.joining(ray_local)
    outputs = [succeeded(jobs.run_job_command(runnable(command), cwd=tmp_path, env=env, timeout=600))
               for command in commands[:4]]
    outputs += [succeeded(result) for result in jobs.run_side_by_side(
        [runnable(command) for command in commands[4:]], logs=tmp_path, cwd=tmp_path, env=env)]
    with open(tmp_path / "runs" / "dev" / "metrics.csv") as handle:  # trained 1 epoch, resumed to 2
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2]
    # The checkpoint knows the ground resolution it learned from: the city's 0.5 m pixels (UTM metres).
    stored = read_checkpoint(str(tmp_path / "runs" / "dev" / "checkpoints" / "best.pt")).checkpoint
    assert stored is not None and stored.gsd_m is not None and abs(stored.gsd_m - 0.5) < 0.002
    evaluation = json.loads(outputs[4][outputs[4].index("{"):])
    assert evaluation["split"] == "test" and evaluation["patch_size"] == 256 and evaluation["samples"] >= 1
    pixels = sum(evaluation[k] for k in ("tp", "fp", "fn", "tn"))
    assert pixels == evaluation["samples"] * 256 * 256 and 0 <= evaluation["iou"] <= 1
    (summary,) = [json.loads(path.read_text()) for path in Path(tmp_path / "out").glob("summary.json")]
    assert summary["ok"] == 1 and "iou" in summary["inputs"][0]["metrics"]
    with rasterio.open(tmp_path / "out" / "image" / "mask.tif") as mask:
        assert (mask.width, mask.height) == (1024, 1024)
    assert "parameters: 59,495,745" in outputs[6]

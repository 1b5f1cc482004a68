"""Every job's command line: bad input is one `error:` line and exit 2, before Ray starts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import inputs as fi
from tests import jobs
from tests.conftest import write_geotiff
from tests.servers import free_port

CLI_CASES = {
    "train: YAML with an unknown key": (
        "train", lambda t: ["--config", _yaml(t, "train:\n  epochs: 2\n  learning_rate: 0.1\n")],
        "error: config key 'train.learning_rate' is unknown: expected one of data_root, run_dir, "),
    "segment: negative threshold": (
        "segment", lambda t: ["--input", t / "in.tif", "--checkpoint", t / "m.pt", "--output", t / "out",
                              "--set", "segment.threshold=-0.1"],
        "error: config key 'segment.threshold' has value -0.1: expected a probability in (0, 1) or null"),
    "prepare: overlap >= tile size": (
        "prepare", lambda t: ["--images", t / "in.tif", "--labels", t / "l.tif", "--output", t / "out",
                              "--set", "prepare.tile_size=128", "--set", "prepare.overlap=128"],
        "error: config key 'prepare.overlap' has value 128: expected 0 <= overlap < tile_size"),
    "prepare: truncated GeoTIFF": (
        "prepare", lambda t: ["--images", _truncated(t), "--labels", t / "l.geojson", "--output", t / "out"],
        "error: {t}/cut.tif: "),
}


def _truncated(folder: Path) -> Path:
    return fi.truncated_copy(write_geotiff(folder / "full.tif", np.ones((3, 64, 64), np.uint8)), folder / "cut.tif")


def _yaml(folder: Path, text: str) -> Path:
    (folder / "bad.yaml").write_text(text)
    return folder / "bad.yaml"


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_bad_input_exits_2_with_one_line_before_ray_starts(case, tmp_path):
    name, args, start = CLI_CASES[case]
    result = jobs.run_job(name, *args(tmp_path), env=jobs.job_env(tmp_path / "ray"), timeout=180)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start.format(t=tmp_path)), result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "ray").exists()  # Ray never started


def test_an_s3_endpoint_that_cannot_be_reached_is_one_line(tmp_path):
    """Nothing listens on the endpoint: botocore's EndpointConnectionError, after one try per request."""
    env = jobs.job_env(tmp_path / "ray", AWS_ACCESS_KEY_ID="segcore-test-key-id",
                       AWS_SECRET_ACCESS_KEY="segcore-test-secret-value")
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = jobs.run_job("train", "--set", "train.data_root=s3://nowhere/patches", "--set",
                          f"train.run_dir={tmp_path / 'run'}", "--set", f"s3.endpoint_url={endpoint}", "--set",
                          "s3.max_attempts=1", env=env, timeout=180)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f'error: S3: Could not connect to the endpoint URL: "{endpoint}/nowhere') and \
        line.endswith("(check s3.endpoint_url, s3.region and the network)"), line
    assert not (tmp_path / "run").exists() and not (tmp_path / "ray").exists()

import datetime
import subprocess
import sys

import pytest

from segcore.config import ConfigError, datetime_interval, load_config
from tests.conftest import REPO


def test_defaults_and_fork_equivalent_training_config():
    cfg = load_config(REPO / "configs" / "train.yaml")
    assert cfg.model.arch == "refinenet" and cfg.model.backbone == "resnet50" and cfg.model.decoder_width == 256
    assert cfg.train.loss == "bce_dice" and cfg.train.loss_weight == 1.0
    assert cfg.train.batch_size == 16 and cfg.train.lr == 1e-4 and cfg.train.weight_decay == 1e-5
    assert cfg.train.threshold == 0.45 and cfg.train.tile_size == 384
    assert cfg.train.augment.hflip > 0 and cfg.train.augment.vflip > 0 and cfg.train.augment.rotate_limit == 15
    assert cfg.input.scale_max is None  # uint8 imagery divided by 255
    assert cfg.model.pretrained is False


@pytest.mark.parametrize("name", ["train.yaml", "dev.yaml", "segment.yaml", "real-cpu.yaml"])
def test_shipped_configs_load(name):
    load_config(REPO / "configs" / name)


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=3e-4", "train.epochs=3", "model.backbone=resnet18",
                             "input.bands=[3,2,1]", "segment.threshold=0.5", "train.use_gpu=true"])
    assert cfg.train.lr == 3e-4 and cfg.train.epochs == 3 and cfg.model.backbone == "resnet18"
    assert cfg.input.bands == [3, 2, 1] and cfg.segment.threshold == 0.5 and cfg.train.use_gpu is True


@pytest.mark.parametrize("override, words", [
    ("train.lrr=1", ["train.lrr", "unknown", "lr"]),
    ("nosection.x=1", ["nosection", "unknown"]),
    ("train.epochs=abc", ["train.epochs", "'abc'", "integer"]),
    ("train.lr=-1", ["train.lr", "-1", "> 0"]),
    ("segment.threshold=-0.2", ["segment.threshold", "-0.2", "(0, 1)"]),
    ("segment.overlap=384", ["segment.overlap", "384", "tile_size"]),
    ("model.backbone=vgg16", ["model.backbone", "vgg16", "resnet50"]),
    ("segment.tta=rot90", ["segment.tta", "rot90", "'d4'"]),
    ("train.use_gpu=maybe", ["train.use_gpu", "maybe", "true or false"]),
    ("prepare.train_ratio=0.9", ["train_ratio", "sum"]),
    ("train.lr", ["section.key=value"]),
])
def test_bad_values_fail_in_one_line_naming_key_and_value(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_segcore_imports_without_ray():
    code = ("import sys, segcore, segcore.config, segcore.metrics, segcore.losses, segcore.model, "
            "segcore.checkpoint, segcore.raster.io, segcore.raster.grid; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# Imagery sources and run tracking: s3.anonymous, http, stac, train.tracking.

def test_source_and_tracking_settings():
    assert load_config().train.tracking == ["tensorboard"] and load_config().s3.anonymous is False
    cfg = load_config(None, ["s3.anonymous=true", "s3.max_attempts=2", "http.timeout_s=5", "http.max_retries=0",
                             "stac.asset=image", "stac.bbox=[15, 47.5, 15.5, 48]", "stac.datetime=2023-01-01/..",
                             "train.tracking=[tensorboard, mlflow]"])
    assert cfg.s3.anonymous is True and cfg.s3.max_attempts == 2
    assert cfg.http.timeout_s == 5.0 and cfg.http.max_retries == 0
    assert cfg.stac.asset == "image" and cfg.stac.bbox == [15.0, 47.5, 15.5, 48.0]
    assert cfg.stac.datetime == "2023-01-01/.." and cfg.train.tracking == ["tensorboard", "mlflow"]
    assert load_config(None, ["stac.datetime=2023-05-01"]).stac.datetime == "2023-05-01"  # YAML: a date


def test_datetime_intervals():
    utc = datetime.timezone.utc
    start, end = datetime_interval("2023-05-01/2023-05-02")  # a date as the end is its whole day
    assert start == datetime.datetime(2023, 5, 1, tzinfo=utc)
    assert end == datetime.datetime(2023, 5, 2, 23, 59, 59, 999999, tzinfo=utc)
    assert datetime_interval("../2023-06-01T12:00:00Z") == (None, datetime.datetime(2023, 6, 1, 12, tzinfo=utc))
    start, end = datetime_interval("2023-06-01T12:00:00+02:00")  # one instant
    assert start == end == datetime.datetime(2023, 6, 1, 10, tzinfo=utc)


@pytest.mark.parametrize("override, words", [
    ("http.timeout_s=0", ["http.timeout_s", "> 0"]),
    ("http.max_retries=-1", ["http.max_retries", ">= 0"]),
    ("stac.bbox=[15, 48, 16, 47]", ["stac.bbox", "south < north"]),
    ("stac.bbox=[15, 47]", ["stac.bbox", "[west, south, east, north]"]),
    ("stac.datetime=2023-13-01", ["stac.datetime", "'2023-13-01'", "RFC 3339"]),
    ("stac.datetime=2024-01-01/2023-01-01", ["stac.datetime", "START/END"]),
    ("s3.anonymous=yes please", ["s3.anonymous", "true or false"]),
    ("s3.max_attempts=0", ["s3.max_attempts", ">= 1"]),
    ("storage.shared_fs=maybe", ["storage.shared_fs", "true or false"]),
    ("train.backend=mpi", ["train.backend", "'mpi'", "'gloo'"]),
    ("train.tracking=[wandb]", ["train.tracking[0]", "'wandb'", "'tensorboard'"]),
    ("train.tracking=[mlflow, mlflow]", ["train.tracking", "at most once"]),
])
def test_bad_source_and_tracking_values_fail_in_one_line(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value) and all(word in str(err.value) for word in words)


def test_sources_and_tracking_import_without_ray_or_torch():
    code = ("import sys, segcore.storage, segcore.stac, segcore.tracking, segcore.labels, segcore.raster.io; "
            "assert 'ray' not in sys.modules and 'torch' not in sys.modules, 'ray or torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)

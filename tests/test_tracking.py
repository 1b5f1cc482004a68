"""segcore.tracking: TensorBoard event files and MLflow runs, read back with their own readers; resumes."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from segcore.config import ConfigError, S3Config
from segcore.storage import filesystem
from segcore.tracking import check_tracking, open_tracking

TRAIN = {"lr": 0.0001, "epochs": 3, "tracking": ["tensorboard", "mlflow"]}
PARAMS = {"train": TRAIN, "model": {"backbone": "resnet18"}}
PNG = cv2.imencode(".png", np.full((20, 30, 3), 200, np.uint8))[1].tobytes()


def metrics(epoch: int, attempt: int = 0) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / (epoch + 1) + attempt, "val_iou": 0.1 * epoch + attempt,
            "lr": 1e-4, "samples_per_s": 50.0 + epoch, "improved": True}


def events(logdir) -> EventAccumulator:
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator: EventAccumulator, tag: str) -> dict[int, float]:
    """{step: value} of a scalar, checking that no step was logged twice."""
    logged = accumulator.Scalars(tag)
    assert len({event.step for event in logged}) == len(logged), f"{tag}: a step logged twice"
    return {event.step: event.value for event in logged}


def test_tensorboard_has_one_scalar_per_epoch_per_metric_and_the_artifacts(tmp_path):
    run_dir = str(tmp_path / "run")
    with open_tracking(["tensorboard"], run_dir, PARAMS) as tracking:
        for epoch in range(3):
            tracking.log_epoch(epoch, metrics(epoch))
            tracking.log_artifact("training_curves.png", PNG)
        tracking.log_artifact("best_checkpoint.txt", b"runs/a/checkpoints/best.pt\n")
    found = events(tmp_path / "run" / "tensorboard")
    numbers = ["epoch", "train_loss", "val_iou", "lr", "samples_per_s"]  # booleans are not metrics
    assert sorted(found.Tags()["scalars"]) == sorted(numbers)
    for name in numbers:
        assert scalars(found, name) == pytest.approx({epoch: metrics(epoch)[name] for epoch in range(3)})
    assert [(image.step, image.width, image.height) for image in found.Images("training_curves.png")] == \
        [(0, 30, 20), (1, 30, 20), (2, 30, 20)]
    text = found.Tensors("best_checkpoint.txt/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.strip() == "runs/a/checkpoints/best.pt"
    config = found.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "lr: 0.0001" in config and "backbone: resnet18" in config


def test_tensorboard_resume_continues_the_run_and_replaces_epochs_after_the_checkpoint(tmp_path):
    run_dir = str(tmp_path / "run")
    first = open_tracking(["tensorboard"], run_dir, PARAMS)
    for epoch in range(4):
        first.log_epoch(epoch, metrics(epoch))
        if epoch == 1:
            saved = first.state()  # the checkpoint of epoch 1; epochs 2 and 3 are lost with the worker
    first.close(failed=True)
    assert saved == {"tensorboard": {"next_step": 2}}
    with open_tracking(["tensorboard"], run_dir, PARAMS, resume=saved) as resumed:
        for epoch in range(2, 5):
            resumed.log_epoch(epoch, metrics(epoch, attempt=1))
    assert scalars(events(tmp_path / "run" / "tensorboard"), "val_iou") == pytest.approx(
        {0: 0.0, 1: 0.1, 2: 1.2, 3: 1.3, 4: 1.4})


def test_tensorboard_on_s3_uploads_every_epoch(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    s3, run_dir = S3Config(endpoint_url=endpoint), f"s3://{bucket}/runs/a"
    fs = filesystem(run_dir, s3)

    def downloaded(name: str):
        fs.get(f"{run_dir}/tensorboard/", str(tmp_path / name) + "/", recursive=True)
        return events(tmp_path / name)

    tracking = open_tracking(["tensorboard"], run_dir, PARAMS, s3=s3)
    tracking.log_epoch(0, metrics(0))
    assert scalars(downloaded("after0"), "val_iou") == {0: 0.0}  # visible before the run ends
    tracking.log_epoch(1, metrics(1))
    tracking.log_artifact("roc_pr.png", PNG)
    saved = tracking.state()
    tracking.close()
    with open_tracking(["tensorboard"], run_dir, PARAMS, resume=saved, s3=s3) as resumed:
        resumed.log_epoch(2, metrics(2))
    found = downloaded("end")
    assert scalars(found, "val_iou") == pytest.approx({0: 0.0, 1: 0.1, 2: 0.2})
    assert [image.step for image in found.Images("roc_pr.png")] == [1]
    # A file per epoch, one with what close published (roc_pr.png), and the resumed run's.
    assert len(fs.ls(f"{run_dir}/tensorboard/", refresh=True)) == 4


def test_mlflow_run_with_the_metrics_and_a_resume_that_keeps_the_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    run_dir = str(tmp_path / "dev")
    with open_tracking(["tensorboard", "mlflow"], run_dir, PARAMS) as tracking:
        for epoch in range(2):
            tracking.log_epoch(epoch, metrics(epoch))
        tracking.log_artifact("training_curves.png", PNG)
        tracking.log_artifact("plots/roc_pr.png", PNG)
        saved = tracking.state()
    run_id = saved["mlflow"]["run_id"]
    assert set(saved) == {"tensorboard", "mlflow"}

    longer = {**PARAMS, "train": {**TRAIN, "epochs": 4}}
    with open_tracking(["tensorboard", "mlflow"], run_dir, longer, resume=saved) as resumed:
        assert resumed.state()["mlflow"]["run_id"] == run_id
        for epoch in range(2, 4):
            resumed.log_epoch(epoch, metrics(epoch))

    client = MlflowClient(f"sqlite:///{tmp_path / 'dev' / 'mlruns' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "segcore"]
    (run,) = client.search_runs([experiment.experiment_id])  # no second run
    assert run.info.run_id == run_id and run.info.run_name == "dev" and run.info.status == "FINISHED"
    for name in ("train_loss", "val_iou", "lr", "samples_per_s"):
        history = client.get_metric_history(run_id, name)
        assert sorted(m.step for m in history) == [0, 1, 2, 3]
        assert {m.step: m.value for m in history} == pytest.approx({e: metrics(e)[name] for e in range(4)})
    assert run.data.params["train.lr"] == "0.0001" and run.data.params["train.epochs"] == "3"
    assert run.data.tags["resumed.train.epochs"] == "4"  # MLflow parameters cannot change
    assert {a.path for a in client.list_artifacts(run_id)} == {"training_curves.png", "plots"}
    local = client.download_artifacts(run_id, "plots/roc_pr.png", str(tmp_path))
    assert Path(local).read_bytes() == PNG
    assert run.info.artifact_uri.startswith((tmp_path / "dev" / "mlruns" / "artifacts").as_uri())


def test_missing_mlflow_is_one_line_before_training(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    check_tracking(["tensorboard"], str(tmp_path))
    message = ("train.tracking includes mlflow, which is not installed: pip install '.[mlflow]' "
               "(or drop mlflow from train.tracking)")
    with pytest.raises(ConfigError) as error:
        check_tracking(["tensorboard", "mlflow"], str(tmp_path))
    assert str(error.value) == message
    with pytest.raises(ConfigError, match=r"^train.tracking includes mlflow, which is not installed"):
        open_tracking(["mlflow"], str(tmp_path / "run"), PARAMS)
    assert not (tmp_path / "run").exists()


def test_mlflow_with_an_s3_run_dir_needs_a_tracking_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"^train.tracking includes mlflow and train.run_dir s3://b/run is on S3, "
                       "where no MLflow store can live: set MLFLOW_TRACKING_URI to a tracking server$"):
        check_tracking(["mlflow"], "s3://b/run")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    check_tracking(["mlflow"], "s3://b/run")

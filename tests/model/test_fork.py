"""The public fork's checkpoints, as its own code writes them, give the fork's logits through segcore.

The fork (building-footprint-segmentation 0.2.4, a test extra) is the reference implementation that segcore
replaces. Its users have training-state files written by its `TrainStateCallback` (state/best.pt,
state/default.pt: the trainer's `collect_state` layout, the best validation loss a numpy float64) and bare
state dicts from its weight-saving path (`adjust_model`, as `TrainChkCallback` writes). Each loads through
segment, evaluate and train.init_from and predicts what the fork's own model predicts.
"""
from __future__ import annotations

import functools
import json
import types
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torchvision

from segcore.checkpoint import NUMPY_SCALAR_GLOBALS, read_checkpoint
from segcore.config import load_config
from segcore.errors import InputError
from segcore.inference import predict_block, to_mask
from segcore.metrics import ConfusionCounts
from segcore.model.fork import from_fork_state_dict
from segcore.model.refinenet import RefineNet
from segcore.training import TrainHooks, to_model_input
from segcore.vectors.objects import ObjectCounts, mask_object_counts
from tests import jobs
from tests.conftest import REPO
from tests.helpers import small_config
from tests.inputs import write_patch_set

fork_refinenet = pytest.importorskip(
    "building_footprint_segmentation.seg.binary.models.refinenet",
    reason="the fork is the reference implementation (pip install building-footprint-segmentation==0.2.4)",
)
from building_footprint_segmentation.helpers.callbacks import TrainChkCallback, TrainStateCallback  # noqa: E402
from building_footprint_segmentation.trainer import Trainer  # noqa: E402

TILE = 64
SEGMENT = ("segment.tile_size=64", "segment.overlap=16", "segment.block_size=256", "segment.batch_size=8",
           "segment.preview_size=64")


@pytest.fixture(scope="module")
def fork_models():
    """The fork's ReFineNet constructor, with torchvision's current resnet API patched in.

    The fork calls ``models.resnet50(pretrained=...)``, which torchvision >= 0.24 rejects.
    """
    patch = pytest.MonkeyPatch()
    shim = types.SimpleNamespace(
        resnet34=lambda pretrained: torchvision.models.resnet34(weights=None),
        resnet50=lambda pretrained: torchvision.models.resnet50(weights=None),
    )
    patch.setattr(fork_refinenet, "models", shim)
    yield fork_refinenet.ReFineNet
    patch.undo()


def randomize_batch_norm(model: torch.nn.Module) -> None:
    """Give every BatchNorm non-default statistics, so a mis-mapped one changes the logits."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.1, 0.1)
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("backbone", ["resnet50", "resnet34"])
def test_fork_weights_give_the_forks_logits(backbone, fork_models):
    torch.manual_seed(0)
    fork = fork_models(res_net_to_use=backbone, pre_trained_image_net=False).eval()
    with torch.no_grad():
        randomize_batch_norm(fork)
    model = RefineNet(backbone, decoder_width=256).eval()
    model.load_state_dict(from_fork_state_dict(fork.state_dict())[0])
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, logits = fork(image), model(image)
    print(f"{backbone}: max abs logit difference vs the fork {(logits - expected).abs().max().item():.3g}")
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def fork_run(fork_models, tmp_path_factory) -> types.SimpleNamespace:
    """The fork's own code writes its files for a RefineNet-ResNet50 trained one step on random data:
    `Trainer.collect_state` (model wrapped in DataParallel: `module.` keys, as on a GPU machine) handed to
    `TrainStateCallback` (state/best.pt, state/default.pt) and `TrainChkCallback` (the bare weights)."""
    torch.manual_seed(0)
    fork = fork_models(res_net_to_use="resnet50", pre_trained_image_net=False)
    with torch.no_grad():
        randomize_batch_norm(fork)
    wrapped = torch.nn.DataParallel(fork)
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-4)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(wrapped(torch.rand(2, 3, TILE, TILE)),
                                                                torch.rand(2, 1, TILE, TILE).round())
    loss.backward()
    optimizer.step()
    fork.eval()
    log_dir = tmp_path_factory.mktemp("fork_run")
    trainer = Trainer(wrapped, None, optimizer, None, None, [], None)
    logs = {"valid_loss": np.mean([0.5, 0.25]),
            **trainer.collect_state(0, 10, 1, np.mean([0.5, 0.25]), "complete")}
    for callback in (TrainStateCallback(str(log_dir)), TrainChkCallback(str(log_dir))):
        callback.on_epoch_end(0, logs)
    (state,) = log_dir.glob("*/state/best.pt")
    (weights,) = log_dir.glob("*/chk_pth/chk_pth.pt")
    return types.SimpleNamespace(model=fork, best=state, default=state.with_name("default.pt"), weights=weights)


def test_the_forks_files_are_what_its_users_have(fork_run):
    with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):  # the reader's allow-list, and nothing more
        raw = torch.load(fork_run.best, weights_only=True)
    assert set(raw) == {"model", "optimizer", "start_epoch", "step", "end_epoch", "bst_vld_loss"}
    assert type(raw["bst_vld_loss"]) is np.float64 and next(iter(raw["model"])).startswith("module.")
    assert not next(iter(torch.load(fork_run.weights, weights_only=True))).startswith("module.")
    with pytest.raises(Exception, match="numpy"):  # why the reader needs its numpy allow-list
        torch.load(fork_run.best, weights_only=True)
    kinds = {path.name: read_checkpoint(str(path)).kind for path in (fork_run.best, fork_run.default, fork_run.weights)}
    assert kinds == {"best.pt": "fork state", "default.pt": "fork state", "chk_pth.pt": "fork weights"}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 96 x 128 GeoTIFF of a generated city."""
    from segcore.synth import generate_city

    city = generate_city(tmp_path_factory.mktemp("city"), 128, 96, seed=3)
    return city.image


def forks_mask(fork: torch.nn.Module, image: Path) -> np.ndarray:
    """The mask the fork's own model predicts with segment's tiling, blending and the 0.45 threshold."""
    with rasterio.open(image) as src:
        rgb = src.read()
    prediction = predict_block(fork, rgb, np.ones(rgb.shape[1:], bool), tile_size=64, overlap=16, batch_size=8)
    return to_mask(prediction.probability, 0.45)


def read_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_segment_cli_with_the_forks_training_state_gives_the_forks_mask(fork_run, scene, fork_clis):
    assert fork_clis.segment.returncode == 0, fork_clis.segment.stderr[-3000:]
    assert np.array_equal(read_mask(fork_clis.out / "image" / "mask.tif"), forks_mask(fork_run.model, scene))


def test_segment_with_the_forks_bare_weights_gives_the_forks_mask(fork_run, scene, ray_local, tmp_path):
    from segcore.pipelines.segment import plan_segment, run_segment

    cfg = load_config(REPO / "configs" / "segment.yaml", SEGMENT)
    summary = run_segment(plan_segment([str(scene)], str(fork_run.weights), str(tmp_path / "out"), cfg))
    assert summary["ok"] == 1 and summary["threshold"] == 0.45
    assert np.array_equal(read_mask(tmp_path / "out" / "image" / "mask.tif"), forks_mask(fork_run.model, scene))


def forks_counts(fork: torch.nn.Module, root: Path, split: str) -> tuple[ConfusionCounts, ObjectCounts]:
    """Pixel and building counts of the fork's own model over a split's patches at 0.45."""
    from segcore.data.patches import decode_image, decode_label, list_pairs

    counts, objects = ConfusionCounts(), ObjectCounts()
    for image, label in list_pairs(str(root), split):
        x = to_model_input(decode_image(Path(image).read_bytes(), image)[None], torch.device("cpu"))
        with torch.no_grad():
            probability = fork(x).sigmoid()[0, 0].numpy()
        truth = decode_label(Path(label).read_bytes(), label) > 0
        counts += ConfusionCounts.from_arrays(probability >= 0.45, truth)
        objects += mask_object_counts(probability >= 0.45, truth, np.rint(probability * 255).astype(np.uint8))
    return counts, objects


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> Path:
    return write_patch_set(tmp_path_factory.mktemp("patches"), counts=(("train", 4), ("val", 3), ("test", 3)))


def test_evaluate_with_each_fork_file_gives_the_forks_counts(fork_run, patches, ray_local, tmp_path):
    from segcore.pipelines.evaluate import run_evaluation

    expected, objects = forks_counts(fork_run.model, patches, "test")
    assert objects.true > 0
    for path in (fork_run.best, fork_run.weights):
        cfg = load_config(None, ["train.num_workers=1", "train.cpus_per_worker=1"])
        metrics = run_evaluation(cfg, str(path), str(patches), "test")
        assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == \
            (expected.tp, expected.fp, expected.fn, expected.tn), path.name
        assert metrics["objects"] == objects.summary(), path.name
        assert metrics["threshold"] == 0.45 and metrics["samples"] == 3


@pytest.fixture(scope="module")
def fork_clis(fork_run, scene, patches, ray_local, tmp_path_factory):
    """jobs/segment.py and jobs/evaluate.py with the fork's training state, side by side, joining the session's
    Ray: what they printed, and where segment wrote its outputs and evaluate its metrics."""
    root = tmp_path_factory.mktemp("fork_clis")
    segment = jobs.job("segment", "--config", REPO / "configs" / "segment.yaml", "--input", scene, "--checkpoint",
                       fork_run.best, "--output", root / "out", *(arg for item in SEGMENT for arg in ("--set", item)))
    evaluate = jobs.job("evaluate", "--checkpoint", fork_run.best, "--data", patches, "--split", "val",
                        "--output", root / "metrics.json")
    results = jobs.run_side_by_side([segment, evaluate], logs=root, env=jobs.joining(ray_local), timeout=300)
    return types.SimpleNamespace(segment=results[0], evaluate=results[1], out=root / "out",
                                 metrics=root / "metrics.json")


def test_evaluate_cli_with_the_forks_training_state(fork_run, patches, fork_clis):
    expected, objects = forks_counts(fork_run.model, patches, "val")
    assert fork_clis.evaluate.returncode == 0, fork_clis.evaluate.stderr[-3000:]
    metrics = json.loads(fork_clis.metrics.read_text())
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == (expected.tp, expected.fp, expected.fn,
                                                                            expected.tn)
    assert metrics["objects"] == objects.summary()


def save_initial_state(folder: str, model: torch.nn.Module, rank: int) -> None:
    """A TrainHooks.on_start: each worker's weights before its first optimizer step."""
    torch.save(model.state_dict(), Path(folder) / f"initial_rank{rank}.pt")


def test_init_from_the_forks_training_state_starts_from_its_weights(fork_run, patches, ray_local, tmp_path, capsys):
    from segcore.pipelines.train import run_training

    cfg = small_config(patches, tmp_path / "run", "model.backbone=resnet50", "model.decoder_width=256",
                       "train.epochs=1", "train.batch_size=2", f"train.init_from={fork_run.best}")
    run_training(cfg, hooks=TrainHooks(on_start=functools.partial(save_initial_state, str(tmp_path))))
    line = [text for text in capsys.readouterr().out.splitlines() if text.startswith("train.init_from")]
    assert line == [f"train.init_from {fork_run.best} (fork training state, epoch 1, best val loss 0.375): loaded "
                    "encoder, decoder, head (" + str(len(fork_run.model.state_dict())) + " tensors); initialized "
                    "fresh: nothing; optimizer and schedule start fresh"]
    expected = read_checkpoint(str(fork_run.best)).state_dict
    for rank in (0, 1):
        initial = torch.load(tmp_path / f"initial_rank{rank}.pt", weights_only=True)
        assert initial.keys() == expected.keys()
        for key, value in initial.items():
            assert torch.equal(value, expected[key]), (rank, key)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_init_from_a_checkpoint_that_does_not_fit_is_one_line_before_ray(fork_run, patches, tmp_path):
    from segcore.pipelines.train import run_training

    cfg = small_config(patches, tmp_path / "run", "model.backbone=resnet50", "model.decoder_width=64",
                       f"train.init_from={fork_run.weights}")
    with pytest.raises(InputError) as error:
        run_training(cfg)
    message = str(error.value)
    assert message.startswith(f"{fork_run.weights}: weights do not match refinenet(resnet50, decoder_width=64): ")
    assert "shape mismatch (convolution_layer_" in message and "_dim_reduction.weight" in message
    assert "\n" not in message
    assert not (tmp_path / "run").exists()


def test_init_parts_encoder_takes_the_backbone_for_a_decoder_of_another_width(fork_run, patches, tmp_path):
    from segcore.pipelines.train import _initial_weights

    cfg = small_config(patches, tmp_path / "run", "model.backbone=resnet50", "model.decoder_width=64",
                       f"train.init_from={fork_run.weights}", "train.init_parts=[encoder]")
    weights, line = _initial_weights(cfg)
    encoder = [key for key in RefineNet("resnet50", 64).state_dict() if key.startswith("encoder.")]
    assert sorted(weights) == sorted(encoder)
    assert line == (f"train.init_from {fork_run.weights} (fork weights): loaded encoder ({len(encoder)} tensors); "
                    "initialized fresh: decoder, head; optimizer and schedule start fresh")

"""segcore.checkpoint: the typed segcore format, one reader for segcore and fork files, strict loading
with mismatches named as the file names them, partial loading for fine-tuning, and what is refused."""
import hashlib
import io
import os
import pickle

import numpy as np
import pytest
import torch

from segcore.checkpoint import Checkpoint, TrainingState, load_model, load_weights, read_checkpoint
from segcore.config import InputConfig, ModelConfig
from segcore.errors import InputError
from segcore.model.fork import to_fork_state_dict
from segcore.model.refinenet import RefineNet

SMALL = ModelConfig(backbone="resnet18", decoder_width=16)


def small_model(seed: int = 0, decoder_width: int = 16) -> RefineNet:
    torch.manual_seed(seed)
    return RefineNet("resnet18", decoder_width=decoder_width).eval()


def same_logits(first: torch.nn.Module, second: torch.nn.Module) -> None:
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(first(image), second(image), rtol=0, atol=0)


def test_segcore_checkpoint_round_trips_with_its_settings_and_the_file_hash(tmp_path):
    source = small_model()
    path = tmp_path / "best.pt"
    Checkpoint(SMALL, InputConfig(bands=[3, 2, 1]), source.state_dict(), threshold=0.4, best_f1_threshold=0.35,
               tile_size=256, epoch=7, training=TrainingState({"state": {}}, {}, {}, {"best_epoch": 7})).save(str(path))
    loaded = read_checkpoint(str(path))
    assert loaded.kind == "segcore" and loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    stored = loaded.checkpoint
    assert (stored.model, stored.input.bands, stored.threshold, stored.best_f1_threshold, stored.tile_size,
            stored.epoch) == (SMALL, [3, 2, 1], 0.4, 0.35, 256, 7)
    assert stored.training.progress == {"best_epoch": 7}
    assert loaded.describe() == "segcore checkpoint, epoch 7, refinenet-resnet18"
    model = load_model(str(path), ModelConfig())  # the config's model section is ignored for segcore files
    assert model.model_cfg == SMALL and model.threshold == 0.4 and model.input_cfg.bands == [3, 2, 1]
    same_logits(model.model, source)


@pytest.mark.parametrize("layout", ["bare", "module. prefixes", "training state"])
def test_fork_files_load_into_the_configs_model_with_identical_logits(layout, tmp_path):
    source = small_model()
    fork_state = to_fork_state_dict(source.state_dict())
    assert "layer0.0.weight" in fork_state and "refine_block_4.chained_residual_pooling.convolution_layer_1.weight" \
        in fork_state
    if layout != "bare":
        fork_state = {f"module.{key}": value for key, value in fork_state.items()}
    content = fork_state if layout != "training state" else {
        "model": fork_state, "optimizer": "NA", "start_epoch": 3, "step": 30, "end_epoch": 10,
        "bst_vld_loss": np.float64(0.25)}  # the fork's trainer stores np.mean(...) here
    torch.save(content, tmp_path / "fork.pt")
    loaded = read_checkpoint(str(tmp_path / "fork.pt"))
    assert loaded.kind == ("fork state" if layout == "training state" else "fork weights")
    if layout == "training state":
        assert loaded.describe() == "fork training state, epoch 3, best val loss 0.25"
    model = load_model(loaded, SMALL)
    assert model.input_cfg is None and model.threshold is None
    same_logits(model.model, source)


def fork_file(tmp_path, state: dict) -> str:
    torch.save(state, tmp_path / "fork.pth")
    return str(tmp_path / "fork.pth")


@pytest.fixture
def fork_state():
    return to_fork_state_dict(small_model().state_dict())


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("final_layer.bias"), r"1 missing keys \(final_layer\.bias\)"),
    (lambda s: s.update(extra_head_weight=torch.zeros(1)), r"1 unexpected \(extra_head_weight\)"),
    (lambda s: s.update({"final_layer.bias": torch.zeros(2)}),
     r"1 shape mismatch \(final_layer\.bias: \(2,\) vs \(1,\)\)"),
])
def test_fork_mismatches_are_named_in_the_forks_key_names(change, message, fork_state, tmp_path):
    change(fork_state)
    path = fork_file(tmp_path, fork_state)
    with pytest.raises(InputError, match=rf"fork\.pth: weights do not match refinenet\(resnet18, decoder_width=16\): "
                                         rf"{message}$"):
        load_model(path, SMALL)


def test_checkpoint_of_another_backbone_is_one_line_naming_keys(fork_state, tmp_path):
    with pytest.raises(InputError) as error:
        load_model(fork_file(tmp_path, fork_state), ModelConfig(backbone="resnet50", decoder_width=16))
    message = str(error.value)
    assert "missing keys (layer1.0.conv3.weight" in message and "shape mismatch" in message and "\n" not in message


def test_encoder_only_loads_into_a_model_with_another_decoder_width(tmp_path):
    source = small_model(seed=0, decoder_width=16)
    Checkpoint(SMALL, InputConfig(), source.state_dict()).save(str(tmp_path / "m.pt"))
    target = small_model(seed=1, decoder_width=32)
    fresh_decoder = {k: v.clone() for k, v in target.state_dict().items() if not k.startswith("encoder.")}
    wider = ModelConfig(backbone="resnet18", decoder_width=32)
    loaded = read_checkpoint(str(tmp_path / "m.pt"))
    with pytest.raises(InputError, match=r"weights do not match refinenet\(resnet18, decoder_width=32\): .*shape "
                                         r"mismatch \(adapters\.0\.weight"):
        load_weights(target, loaded, wider)  # the whole model does not fit
    count = load_weights(target, loaded, wider, ["encoder"])
    state = target.state_dict()
    assert count == sum(key.startswith("encoder.") for key in state)
    for key, value in state.items():
        expected = source.state_dict()[key] if key.startswith("encoder.") else fresh_decoder[key]
        assert torch.equal(value, expected), key


def test_encoder_only_still_names_missing_encoder_keys(tmp_path):
    state = small_model().state_dict()
    del state["encoder.layer4.1.bn2.weight"]
    Checkpoint(SMALL, InputConfig(), state).save(str(tmp_path / "m.pt"))
    with pytest.raises(InputError, match=r"for encoder: 1 missing keys \(encoder\.layer4\.1\.bn2\.weight\)"):
        load_weights(small_model(), read_checkpoint(str(tmp_path / "m.pt")), SMALL, ["encoder"])


class _Runs:
    """Unpickling this calls a function: refused by weights_only (fault_inputs has the harmful kind)."""

    def __reduce__(self):
        return os.getpid, ()


@pytest.mark.parametrize("content, words", [
    (b"", "not a PyTorch checkpoint (empty file)"),
    (b"\x80\x04garbage that is no pickle", "refused: not a plain-data checkpoint"),
    (None, "unsupported GLOBAL posix.getpid"),
    ("numpy object array", "refused: not a plain-data checkpoint"),
    ("a list", "not a checkpoint (holds a list"),
])
def test_what_the_reader_refuses_in_one_line(content, words, tmp_path):
    path = tmp_path / "bad.pt"
    if content is None:
        buffer = io.BytesIO()
        torch.save({"model": _Runs()}, buffer)
        content = buffer.getvalue()
    elif content == "numpy object array":  # numpy's array reconstructor is not on the allow-list
        content = pickle.dumps({"model": np.array([1, 2])})
    elif content == "a list":
        buffer = io.BytesIO()
        torch.save([torch.zeros(1)], buffer)
        content = buffer.getvalue()
    path.write_bytes(content)
    with pytest.raises(InputError) as error:
        read_checkpoint(str(path))
    assert str(error.value).startswith(f"{path}: ") and words in str(error.value) and "\n" not in str(error.value)

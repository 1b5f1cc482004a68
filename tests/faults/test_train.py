"""Bad input of train and of the settings: one line before any worker starts."""
from __future__ import annotations

import pytest

from segcore.config import ConfigError, load_config
from segcore.errors import InputError
from tests.faults.common import PREP, SEG
from tests.helpers import one_line_error, small_config
from tests.inputs import write_patch_set


def test_train_bad_data_root_is_one_line_before_workers_start(s3_server, refusing_s3, tmp_path):
    from segcore.pipelines.train import run_training

    root = write_patch_set(tmp_path / "data", counts=(("train", 3), ("val", 2)))
    (root / "train" / "images" / "p001.png").write_bytes(b"")
    with pytest.raises(InputError) as info:
        run_training(small_config(root, tmp_path / "run"))
    one_line_error(info.value, "p001.png: not a readable image")
    with pytest.raises(InputError) as info:
        run_training(small_config("s3://segcore-no-such-bucket/ds", tmp_path / "run", f"s3.endpoint_url={s3_server}"))
    one_line_error(info.value, "s3://segcore-no-such-bucket/ds/train/images: missing")
    with pytest.raises(InputError) as info:
        run_training(small_config(f"s3://{refusing_s3.bucket}/ds", tmp_path / "run",
                                  f"s3.endpoint_url={refusing_s3.endpoint}"))
    one_line_error(info.value, f"s3://{refusing_s3.bucket}/ds/train/images: access denied", "Access Key Id")
    assert not (tmp_path / "run").exists()


def test_negative_threshold_and_overlap_not_below_tile_are_refused(tmp_path):
    from segcore.pipelines.evaluate import run_evaluation

    for override, words in (("train.threshold=-0.1", ["train.threshold", "-0.1", "(0, 1)"]),
                            ("segment.threshold=-0.1", ["segment.threshold", "-0.1", "(0, 1)"]),
                            ("segment.overlap=64", ["segment.overlap", "64", "tile_size (64)"]),
                            ("prepare.overlap=128", ["prepare.overlap", "128", "overlap < tile_size"])):
        with pytest.raises(ConfigError) as info:
            load_config(None, [*SEG, *PREP, override])
        one_line_error(info.value, *words)
    data = write_patch_set(tmp_path / "data", counts=(("val", 1),))
    with pytest.raises(InputError) as info:  # evaluate's --threshold is not a config key: checked on its own
        run_evaluation(small_config(data, tmp_path / "e"), str(tmp_path / "any.pt"), str(data), "val", -0.5)
    one_line_error(info.value, "threshold -0.5: expected a probability in (0, 1)")


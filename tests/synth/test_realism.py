"""Realism options of the generated city (config section `synth`): each one alone, on tiny cities."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from segcore.config import ConfigError, SynthConfig, load_config
from segcore.synth import generate_city, render_scene
from segcore.synth.realism import METAL_ROOF_COLOURS

SIZE, SEED = 320, 0  # 17 buildings


@pytest.fixture(scope="module")
def plain():
    return render_scene(SIZE, SIZE, seed=SEED)


def _scene(**options):
    return render_scene(SIZE, SIZE, seed=SEED, realism=SynthConfig(**options))


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _near_buildings(labels: np.ndarray, reach: int) -> np.ndarray:
    return cv2.dilate((labels > 0).astype(np.uint8), np.ones((2 * reach + 1,) * 2, np.uint8)) > 0


def test_default_options_render_the_city_as_without_them(plain, tmp_path):
    scene = render_scene(SIZE, SIZE, seed=SEED, realism=SynthConfig())
    assert np.array_equal(scene.image, plain.image) and np.array_equal(scene.labels, plain.labels)
    a = generate_city(tmp_path / "a", 200, 150, seed=2)
    b = generate_city(tmp_path / "b", 200, 150, seed=2, realism=SynthConfig())
    for first, second in ((a.image, b.image), (a.labels, b.labels), (a.buildings, b.buildings)):
        assert first.read_bytes() == second.read_bytes()


def test_options_are_deterministic_and_the_files_equal_the_scene(tmp_path):
    options = SynthConfig(roof_colours="global", trees_over_roofs=0.5, haze=0.3, blur_sigma=1.2, noise_sigma=4,
                          colour_noise=2)
    first = generate_city(tmp_path / "a", SIZE, SIZE, seed=SEED, realism=options)
    second = generate_city(tmp_path / "b", SIZE, SIZE, seed=SEED, realism=options)
    assert first.image.read_bytes() == second.image.read_bytes()
    scene = render_scene(SIZE, SIZE, seed=SEED, realism=options)
    assert np.array_equal(np.moveaxis(_read(first.image), 0, 2), scene.image)
    assert np.array_equal(_read(first.labels)[0], scene.labels)


def test_global_roof_colours_repaint_roofs_only(plain):
    scene = _scene(roof_colours="global")
    assert np.array_equal(scene.labels, plain.labels)  # same buildings, same layout
    changed = np.any(scene.image != plain.image, axis=2)
    assert changed.any() and not changed[~_near_buildings(plain.labels, 4)].any()
    roofs = scene.image[plain.labels > 0].astype(float)
    metal = np.array(METAL_ROOF_COLOURS, float)
    # Some roof pixels now lie near a metal colour no temperate roof comes close to (blue, teal, green).
    distance = np.linalg.norm(roofs[:, None, :] - metal[None, :3], axis=2).min(axis=1)
    assert (distance < 40).mean() > 0.02


def test_trees_over_roofs_cover_part_of_some_roofs_and_keep_their_labels(plain):
    scene = _scene(trees_over_roofs=1.0)
    assert np.array_equal(scene.labels, plain.labels)

    def green_roof_share(image):
        roof = image[plain.labels > 0].astype(int)
        return ((roof[:, 1] > roof[:, 0] + 8) & (roof[:, 1] > roof[:, 2] + 8)).mean()

    assert green_roof_share(scene.image) > green_roof_share(plain.image) + 0.02


def test_haze_brightens_and_flattens_the_image(plain):
    scene = _scene(haze=0.5)
    assert np.array_equal(scene.labels, plain.labels)
    assert scene.image.mean() > plain.image.mean() + 10
    assert scene.image.std() < 0.85 * plain.image.std()


def test_blur_sigma_softens_the_image(plain):
    def sharpness(image):
        return np.abs(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F)).mean()

    softer, sharper = _scene(blur_sigma=2.0, noise_sigma=0), _scene(blur_sigma=0.3, noise_sigma=0)
    assert sharpness(softer.image) < 0.7 * sharpness(plain.image) < sharpness(sharper.image)


def test_noise_sigma_and_colour_noise_set_the_grain(plain):
    clean = _scene(noise_sigma=0).image.astype(float)
    for options, luminance in ((dict(noise_sigma=8), True), (dict(noise_sigma=0, colour_noise=8), False)):
        grain = _scene(**options).image.astype(float) - clean
        assert 6 < grain.std() < 10
        # Luminance noise is the same on the three channels; colour noise is not.
        spread = np.abs(grain[..., 0] - grain[..., 1]).mean()
        assert (spread < 1.5) == luminance


def test_ground_resolution_resamples_the_image_and_burns_the_footprints_on_the_finer_grid(tmp_path):
    fine = generate_city(tmp_path / "fine", 300, 200, seed=SEED, realism=SynthConfig(ground_resolution=0.3))
    coarse = generate_city(tmp_path / "coarse", 180, 120, seed=SEED)  # the same ground, at 0.5 m
    with rasterio.open(fine.image) as image, rasterio.open(fine.labels) as labels:
        assert image.res == (0.3, 0.3) and image.shape == (200, 300) and labels.transform == image.transform
        assert image.bounds.left == rasterio.open(coarse.image).bounds.left
        features = json.loads(fine.buildings.read_text())["features"]
        burned = rasterize([(f["geometry"], 255) for f in features], out_shape=image.shape,
                           transform=image.transform, dtype="uint8")
        assert np.array_equal(burned, labels.read(1))
        # Seen at 0.5 m again, the fine image is the coarse one (resampling softens it a little).
        again = image.read(out_shape=(3, 120, 180), resampling=rasterio.enums.Resampling.average).astype(float)
    reference = _read(coarse.image).astype(float)
    assert np.abs(again - reference)[:, 4:-4, 4:-4].mean() < 12
    fraction = (_read(fine.labels) > 0).mean()
    assert abs(fraction - (_read(coarse.labels) > 0).mean()) < 0.03
    with pytest.raises(ValueError, match="ground resolution"):
        render_scene(64, 64, realism=SynthConfig(ground_resolution=0.3))


def test_command_line_takes_the_synth_section(tmp_path):
    done = subprocess.run([sys.executable, "-m", "segcore.synth", "--width", "90", "--height", "60", "--output",
                           str(tmp_path), "--set", "synth.ground_resolution=0.25", "--set", "synth.haze=0.2"],
                          capture_output=True, text=True, check=True)
    assert "0.25 m/px" in done.stdout
    with rasterio.open(tmp_path / "image.tif") as image:
        assert image.res == (0.25, 0.25)
    bad = subprocess.run([sys.executable, "-m", "segcore.synth", "--width", "9", "--height", "9", "--output",
                          str(tmp_path / "bad"), "--set", "synth.haze=2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "synth.haze" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("override", ["synth.ground_resolution=0", "synth.roof_colours=tropical",
                                      "synth.trees_over_roofs=1.5", "synth.haze=-0.1", "synth.blur_sigma=0",
                                      "synth.noise_sigma=-1", "synth.colour_noise=99"])
def test_bad_synth_settings_are_one_line_naming_the_key(override):
    with pytest.raises(ConfigError, match=f"'{override.split('=')[0]}'"):
        load_config(None, [override])

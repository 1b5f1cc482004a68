"""The `polygons` config section: defaults, typed overrides, one-line errors."""
from __future__ import annotations

import pytest

from segcore.config import ConfigError, load_config


def test_defaults():
    cfg = load_config(None).polygons
    assert cfg.format == "geoparquet" and cfg.crs == "image" and cfg.regularize is False
    assert cfg.min_area_m2 > 0 and cfg.fill_holes_m2 > 0 and cfg.simplify_px > 0 and cfg.match_iou == 0.5


def test_overrides_are_typed():
    cfg = load_config(None, ["polygons.format=fgb", "polygons.crs=EPSG:4326", "polygons.min_area_m2=10",
                             "polygons.regularize=true", "polygons.regularize_min_edge_m=1.5"]).polygons
    assert (cfg.format, cfg.crs, cfg.min_area_m2, cfg.regularize, cfg.regularize_min_edge_m) == \
        ("fgb", "EPSG:4326", 10.0, True, 1.5)


@pytest.mark.parametrize("override, words", [
    ("polygons.format=shp", ["polygons.format", "'shp'", "'geoparquet'"]),
    ("polygons.crs=EPSG:3857", ["polygons.crs", "'EPSG:3857'", "'image'"]),
    ("polygons.min_area_m2=-1", ["polygons.min_area_m2", "-1", ">= 0"]),
    ("polygons.simplify_px=abc", ["polygons.simplify_px", "'abc'", "a number"]),
    ("polygons.regularize_angle_deg=60", ["polygons.regularize_angle_deg", "60", "(0, 45)"]),
    ("polygons.regularize_max_change=0", ["polygons.regularize_max_change", "(0, 1]"]),
    ("polygons.match_iou=1.5", ["polygons.match_iou", "1.5", "(0, 1]"]),
    ("polygons.tolerance=1", ["polygons.tolerance", "unknown", "simplify_px"]),
])
def test_bad_values_fail_in_one_line(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)
    for word in words:
        assert word in str(error.value)


def test_regularization_needs_a_simplified_outline():
    with pytest.raises(ConfigError, match=r"polygons\.simplify_px.*when regularize is true"):
        load_config(None, ["polygons.regularize=true", "polygons.simplify_px=0"])
    assert load_config(None, ["polygons.simplify_px=0"]).polygons.simplify_px == 0

"""The embedded sample city: a seeded, aerial-like RGB GeoTIFF with exact building labels.

Used by the demo, the tests and the benchmarks instead of downloaded imagery::

    python -m segcore.synth --width 4096 --height 4096 --seed 0 --output out/city

writes ``image.tif`` (RGB), ``labels.tif`` (255 = building) and ``buildings.geojson``.
The city is planned globally from the seed (layout.py) and rendered in horizontal strips
(render.py), so any size fits in a few hundred MB; the same seed and size give
byte-identical files.
"""
from segcore.synth.city import CityPaths, Scene, generate_city, render_scene

__all__ = ["CityPaths", "Scene", "generate_city", "render_scene"]

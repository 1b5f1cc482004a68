"""Surface colours of the synthetic city, as sRGB (0-255) seen from above in daylight.

The palettes overlap on purpose: grey roofs next to asphalt and concrete, brown and
terracotta roofs next to bare soil, white roofs next to sidewalks, so that a model cannot
separate buildings from the background by colour alone and has to learn shape.
"""
from __future__ import annotations

import numpy as np

Colour = tuple[float, float, float]

GRASS = (88, 106, 58)
DRY_GRASS = (136, 130, 88)
PARK_GRASS = (80, 104, 54)
SOIL_COLOURS = ((146, 122, 94), (152, 108, 82))   # loam, red clay (as close to roofs as real soil)
CONCRETE = (160, 156, 146)
ASPHALT = (92, 92, 94)
SIDEWALK = (168, 164, 156)
MARKING = (200, 200, 192)        # lines are thinner than a pixel, so fainter than paint
WATER = (38, 58, 60)
RIVER_BANK_GREEN = (66, 82, 50)
TREE_COLOURS = ((44, 64, 38), (56, 78, 42), (68, 90, 48), (40, 56, 40))
CAR_COLOURS = ((215, 215, 212), (30, 30, 32), (120, 122, 125), (150, 40, 38), (40, 60, 120),
               (180, 180, 178))
SHADOW_TINT = (0.46, 0.49, 0.6)  # shade is lit by the blue sky only

ROOF_COLOURS = {
    "terracotta": (170, 84, 60),
    "red_brown": (140, 72, 56),
    "brown": (120, 94, 74),
    "dark_grey": (80, 82, 86),
    "grey": (120, 120, 118),
    "light_grey": (166, 164, 158),
    "white": (212, 212, 206),
    "blue_grey": (104, 118, 136),
}


def jitter(rng: np.random.Generator, rgb: Colour, brightness: float = 0.06, tint: float = 0.03) -> Colour:
    """A random variation of a colour: overall brightness and a slight per-channel tint."""
    level, *channels = rng.random(4).tolist()
    scale = 1 + brightness * (2 * level - 1)
    return tuple(c * scale * (1 + tint * (2 * u - 1)) for c, u in zip(rgb, channels, strict=True))

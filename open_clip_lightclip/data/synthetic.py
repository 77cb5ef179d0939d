"""A small, learnable captioned-shape data set for tests and quick runs: no download.

"a red circle on a white background", drawn with PIL, written with :func:`.shards.write_shards`.
"""
import random
from pathlib import Path
from typing import Iterator, List

from PIL import Image, ImageDraw

from .shards import Sample, write_shards

__all__ = ["synthetic_samples", "write_synthetic_shards", "COLORS", "SHAPES"]

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 170), "orange": (240, 140, 30), "black": (20, 20, 20), "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUNDS = {"white": (250, 250, 250), "light blue": (190, 220, 245), "beige": (235, 225, 200)}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        w = (x1 - x0) / 3
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=fill)
        draw.rectangle((x0, y0 + w, x1, y1 - w), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def synthetic_samples(num_samples: int, image_size: int = 64, seed: int = 0) -> Iterator[Sample]:
    """Captioned coloured shapes: a small, learnable image-text task with no download."""
    rng = random.Random(seed)
    for i in range(num_samples):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        background = rng.choice(list(BACKGROUNDS))
        image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[background])
        size = rng.uniform(0.35, 0.7) * image_size
        x0, y0 = rng.uniform(0, image_size - size), rng.uniform(0, image_size - size)
        _draw_shape(ImageDraw.Draw(image), shape, (x0, y0, x0 + size, y0 + size), COLORS[color])
        yield f"{i:08d}", image, f"a {color} {shape} on a {background} background"


def write_synthetic_shards(
        out_dir,
        num_samples: int = 256,
        image_size: int = 64,
        samples_per_shard: int = 128,
        seed: int = 0,
        prefix: str = "train",
) -> List[Path]:
    return write_shards(synthetic_samples(num_samples, image_size, seed), out_dir, prefix, samples_per_shard)

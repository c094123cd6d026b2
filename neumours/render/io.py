"""Writing rendered frames: PNG images, GIF or MP4 turntables, always atomically.

Frames are float (H, W, 3) images in [0, 1] (values outside are clipped).
GIF and PNG go through Pillow (a matplotlib dependency); MP4 needs the
optional ``imageio`` with ``imageio-ffmpeg``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from neumours.atomic import atomic_path
from neumours.errors import NeumoursError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ANIMATION_SUFFIXES = (".gif", ".mp4")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (H, W, 3) uint8, clipped and rounded (uint8 passes through)."""
    if np.asarray(image).dtype == np.uint8:
        return np.asarray(image)
    return (np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


#: Images shorter than this get no legend: it would cover most of them.
MIN_LEGEND_HEIGHT = 96


def _default_font(size: int):
    """Pillow's default font at ``size`` pixels (Pillow < 10.1 has one fixed-size default font)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def stamp_label_legend(image: np.ndarray, colours, names) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 with a colour key (swatch + name per class) in its lower left corner.

    Args:
        colours: (K, 3) RGB in [0, 1] of the classes to list; names: their K names.

    Images under :data:`MIN_LEGEND_HEIGHT` pixels are returned unchanged.
    """
    from PIL import Image, ImageDraw

    image = np.asarray(image, np.uint8)
    height = image.shape[0]
    if height < MIN_LEGEND_HEIGHT:
        return image.copy()
    size = max(10, height // 40)
    font = _default_font(size)
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    x, y = size // 2, height - size // 2 - len(names) * (size + size // 3)
    for colour, name in zip(colours, names):
        rgb = tuple(int(round(255 * float(c))) for c in colour)
        draw.rectangle([x, y, x + size, y + size], fill=rgb, outline=(255, 255, 255))
        draw.text((x + size + size // 2, y + size // 2), name, fill=(255, 255, 255), font=font, anchor="lm")
        y += size + size // 3
    return np.asarray(pil)


def stamp_title(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 with ``text`` centred in white along its top edge (the panel's
    column title; the image keeps its size). Images under :data:`MIN_LEGEND_HEIGHT` pixels are returned unchanged."""
    from PIL import Image, ImageDraw

    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    if height < MIN_LEGEND_HEIGHT:
        return image.copy()
    size = max(12, height // 25)
    font = _default_font(size)
    pil = Image.fromarray(image)
    ImageDraw.Draw(pil).text((width // 2, size // 2), text, fill=(255, 255, 255), font=font, anchor="mt")
    return np.asarray(pil)


def mp4_available() -> bool:
    """Whether ``imageio`` and ``imageio-ffmpeg`` are installed (needed for .mp4)."""
    return all(importlib.util.find_spec(name) is not None for name in ("imageio", "imageio_ffmpeg"))


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write one frame (float (H, W, 3) in [0, 1] or uint8; format from the suffix: .png, .jpg, .jpeg)."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise NeumoursError(f"{path}: image output must end in {', '.join(IMAGE_SUFFIXES)}")
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp)
    return path


def write_animation(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 15.0) -> Path:
    """Write frames as a looping GIF or an MP4 (H.264 through imageio-ffmpeg).

    Raises:
        NeumoursError: another suffix, or .mp4 without imageio-ffmpeg.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_SUFFIXES:
        raise NeumoursError(f"{path}: animation output must end in {' or '.join(ANIMATION_SUFFIXES)}")
    if suffix == ".mp4" and not mp4_available():
        raise NeumoursError(f"{path}: writing .mp4 needs imageio and imageio-ffmpeg "
                            "(pip install 'neumours[video]'); or write a .gif")
    images = [to_uint8(f) for f in frames]
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            from PIL import Image

            pil = [Image.fromarray(im) for im in images]
            pil[0].save(tmp, save_all=True, append_images=pil[1:], duration=int(round(1000 / fps)), loop=0)
        else:
            import imageio.v2 as imageio

            with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1) as writer:
                for im in images:
                    writer.append_data(im)
    return path

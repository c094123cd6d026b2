"""Refinement targets from a file: ``targets.npz`` (cameras and images or masks), every array checked.

Nothing is unpickled; anything not a readable archive of the expected arrays is one line naming
the file (``neumours refine --targets``, :func:`neumours.refine.checkpoint.refine_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neumours.errors import NeumoursError
from neumours.refine.masks import mask_targets
from neumours.render.box import volume_box
from neumours.render.camera import fit_distance, orbit

#: Largest target image edge, pixels (as ``--size``).
MAX_TARGET_EDGE = 16384


def _read_targets_archive(file: Path) -> dict[str, np.ndarray]:
    """The arrays of ``targets.npz``, every one read (nothing unpickled); one line for anything else."""
    import zipfile
    import zlib

    single = (f"{file}: holds one array, not an .npz archive of named arrays "
              "(np.savez(file, images=..., azimuth=..., elevation=...))")
    try:
        data = np.load(file, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise NeumoursError(single)
        try:
            return {name: np.asarray(data[name]) for name in data.files}
        finally:
            data.close()
    except NeumoursError:
        raise
    except MemoryError:
        raise NeumoursError(f"{file}: too large to load") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, NotImplementedError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise NeumoursError(f"{file}: not a readable NumPy .npz archive ({type(exc).__name__}: {detail})") from None


def _numeric(file: Path, name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise NeumoursError(f"{file}: {name} must hold numbers, got dtype {array.dtype}")
    return array


def load_targets(path: Path, shape, spacing) -> tuple[list, list[np.ndarray], list[np.ndarray] | None, bool]:
    """Cameras, image targets, weights and whether they came from masks, from ``path/targets.npz``
    (or ``path`` itself when it is the file), every array checked: kinds, shapes, sizes, finite values.

    The file holds azimuth and elevation (V,) in degrees and either images (V, H, W, 3) with
    optional weights (V, H, W) (0 = don't care), or masks (V, H, W) of 0 (not tumour), 1 (tumour),
    255 (don't care); cameras orbit at the distance that frames the case's box.

    Raises:
        NeumoursError: one line naming the file and what is wrong with it.
    """
    file = path if path.is_file() else path / "targets.npz"
    if not file.is_file():
        raise NeumoursError(f"{file}: targets file not found (expected images or masks, azimuth, elevation)")
    data = _read_targets_archive(file)
    names = set(data)
    if ("images" in names) == ("masks" in names):
        raise NeumoursError(f"{file}: needs exactly one of the arrays 'images' and 'masks', has {sorted(names)}")
    missing = [n for n in ("azimuth", "elevation") if n not in names]
    if missing:
        raise NeumoursError(f"{file}: missing array(s) {', '.join(missing)} (cameras need azimuth and elevation)")
    from_masks = "masks" in names
    azimuth = _numeric(file, "azimuth", data["azimuth"]).astype(float)
    elevation = _numeric(file, "elevation", data["elevation"]).astype(float)
    weights = None
    if from_masks:
        masks = _numeric(file, "masks", data["masks"])
        if masks.ndim != 3:
            raise NeumoursError(f"{file}: masks must be (views, height, width), got {masks.shape}")
        images_shape = (*masks.shape, 3)
    else:
        images = _numeric(file, "images", data["images"])
        images_shape = images.shape
        if images.ndim != 4 or images.shape[-1] != 3:
            raise NeumoursError(f"{file}: images must be (views, height, width, 3), got {images.shape}")
    views, height, width = images_shape[:3]
    if views < 1 or not (1 <= height <= MAX_TARGET_EDGE and 1 <= width <= MAX_TARGET_EDGE):
        raise NeumoursError(f"{file}: needs at least 1 view of 1..{MAX_TARGET_EDGE} x 1..{MAX_TARGET_EDGE} pixels, "
                            f"got {views} view(s) of {height} x {width}")
    if azimuth.shape != (views,) or elevation.shape != (views,):
        raise NeumoursError(f"{file}: {views} images but {azimuth.size} azimuths and {elevation.size} elevations "
                            f"(expected one of each per view, shape ({views},))")
    if not (np.isfinite(azimuth).all() and np.isfinite(elevation).all()):
        raise NeumoursError(f"{file}: azimuth and elevation must be finite degrees (a camera holds NaN or Inf)")
    if (np.abs(elevation) > 90).any():
        steep = float(elevation[np.abs(elevation) > 90][0])
        raise NeumoursError(f"{file}: elevation must be in [-90, 90] degrees, got {steep}")
    try:
        if from_masks:
            image_list, weights = mask_targets(masks)
            images = np.stack(image_list)
        else:
            images = images.astype(np.float32)
            if "weights" in names:
                weights = _numeric(file, "weights", data["weights"]).astype(np.float32)
    except ValueError as exc:
        raise NeumoursError(f"{file}: {exc}") from None
    if weights is not None and np.shape(weights) != images.shape[:3]:
        raise NeumoursError(f"{file}: weights must be {images.shape[:3]}, got {np.shape(weights)}")
    if not np.isfinite(images).all():
        raise NeumoursError(f"{file}: images contain NaN/Inf")
    if weights is not None and not (np.isfinite(weights).all() and (np.asarray(weights) >= 0).all()):
        raise NeumoursError(f"{file}: weights must be finite and >= 0")
    distance = fit_distance(volume_box(shape, spacing), 30.0, width / height)
    cameras = [orbit(float(a), float(e), distance, width=width, height=height) for a, e in zip(azimuth, elevation)]
    return cameras, list(images), None if weights is None else list(weights), from_masks

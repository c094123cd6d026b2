"""Sets of views of a volume: orbiting cameras, and a label volume rendered from them.

Refinement compares rendered views with target images; the viewer and the
``neumours refine`` command make both from these helpers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import slangpy as spy

from neumours.conventions import NUM_CLASSES
from neumours.render.box import volume_box
from neumours.render.camera import Camera, fit_distance, orbit
from neumours.render.raymarch import ChannelVolume, Frame, Scene, render_device
from neumours.render.transfer import RenderSettings


def orbit_cameras(shape, spacing, count: int, size: tuple[int, int] = (256, 256), elevation: float = 20.0,
                  fov_y_deg: float = 30.0) -> list[Camera]:
    """``count`` cameras orbiting the volume's box at equal azimuth steps, each framing the whole box.

    Args:
        shape: (X, Y, Z) of the volume; spacing: its voxel size (sets the box).
        size: (width, height) of every image.
    """
    width, height = size
    distance = fit_distance(volume_box(shape, spacing), fov_y_deg, width / height)
    return [orbit(360.0 * k / count, elevation, distance, fov_y_deg=fov_y_deg, width=width, height=height)
            for k in range(count)]


def render_label_views(device: spy.Device, labels: np.ndarray, spacing, cameras: Sequence[Camera],
                       settings: RenderSettings) -> list[np.ndarray]:
    """A label volume (X, Y, Z) rendered in soft mode as one-hot class probabilities, one (H, W, 3) image per camera.

    The same path a model's class probabilities take, so the images serve as
    refinement targets (a "corrected" segmentation seen from ``cameras``).
    """
    one_hot = (np.arange(NUM_CLASSES)[:, None, None, None] == np.asarray(labels)[None]).astype(np.float32)
    scene = Scene(device, tuple(labels.shape), tuple(spacing),
                  probabilities=ChannelVolume.upload(device, one_hot, channels_last=False))
    images = []
    for camera in cameras:
        frame = Frame.allocate(device, camera.width, camera.height)
        render_device(scene, camera, settings, frame)
        images.append(frame.to_numpy()[0])
    return images

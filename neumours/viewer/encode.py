"""Frames to JPEG: nvJPEG on the GPU through torchvision where it is installed, Pillow otherwise.

On a CUDA device the frame buffer is viewed as a torch tensor without a copy
(``Buffer.to_torch``), converted to uint8 and encoded on the GPU, so only the
JPEG bytes cross to the host. Elsewhere (the CPU device of tests and CI, or
without torchvision) the float image is downloaded and Pillow encodes it.
"""

from __future__ import annotations

import io

import numpy as np
import slangpy as spy

from neumours.render.io import to_uint8
from neumours.render.raymarch import Frame


def _torchvision_jpeg():
    try:
        from torchvision.io import encode_jpeg
    except ImportError:
        return None
    return encode_jpeg


def gpu_encoder_available(device: spy.Device) -> bool:
    """Whether frames of ``device`` are encoded on the GPU (CUDA device, torch CUDA and torchvision)."""
    if device.info.type != spy.DeviceType.cuda or _torchvision_jpeg() is None:
        return False
    import torch

    return torch.cuda.is_available()


def encode_jpeg(device: spy.Device, frame: Frame, quality: int = 85, gpu: bool | None = None) -> tuple[bytes, str]:
    """The frame's image, clipped to [0, 1], as JPEG bytes; returns (bytes, encoder name).

    Args:
        quality: JPEG quality 1..100.
        gpu: force the GPU path on or off; default :func:`gpu_encoder_available`.
    """
    if gpu if gpu is not None else gpu_encoder_available(device):
        import torch

        device.wait_for_idle()  # the raymarcher ran on slangpy's queue; torch reads the buffer next
        image = frame.image.to_torch(spy.DataType.float32, [frame.height, frame.width, 3])
        pixels = (image.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).permute(2, 0, 1).contiguous()
        data = _torchvision_jpeg()(pixels, quality=int(quality))
        return data.cpu().numpy().tobytes(), "nvjpeg"
    from PIL import Image

    pixels = to_uint8(frame.to_numpy()[0])
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, "JPEG", quality=int(quality))
    return out.getvalue(), "pillow"

"""The raymarcher's integrator in plain torch: the float64 reference of the tests and the benchmark peer.

Written independently of the Slang code from the same definitions
(``transfer.py`` and ``box.py`` docstrings, docs/method.md eq. 1-3), vectorised over
rays: every ray takes the same number of fixed steps, with masks for rays that
left the box or terminated (T < 0.01). Trilinear and nearest sampling use
``torch.nn.functional.grid_sample`` (``align_corners=True``, border padding),
whose corner convention is exactly the box's: g = q / half in [-1, 1] maps to
voxel positions 0 .. D - 1. (Nearest rounds exact halves to even, the kernel
rounds them up; no test samples an exact half.)

Autograd gives the gradients with respect to every tensor of
:class:`TorchScene` that requires them: MRI volumes, class probabilities,
modality weights, look-up-table colours and opacities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neumours.render.box import volume_box
from neumours.render.camera import Camera
from neumours.render.raymarch import MIN_TRANSMITTANCE
from neumours.render.transfer import RenderSettings

# Below this optical depth sigma * dt, alpha / sigma is dt * (-expm1(-x) / x) via a
# guarded division (the quotient itself is exact in float64; the guard keeps 0 / 0
# out of autograd).
_SMALL_DEPTH = 1e-12


@dataclass
class TorchScene:
    """Volumes and rendering parameters as torch tensors (one dtype and device).

    Attributes:
        half: (3,) box half extents.
        volumes: (C, X, Y, Z) or None.
        labels: (X, Y, Z) int64 or None.
        probabilities: (K, X, Y, Z) or None.
        weights: (C,) modality weights; lo, inv_width, gamma: (C,) window;
        enabled: list of C bools; tint: (C, 3).
        lut_colours: (K, 3); lut_opacities: (K,).
        ramp: (scale, lo, inv_width, brightness) of the MRI transfer function.
        dt: step; background: (3,).
        field: class probabilities as a function of (N, 3) box points -> (N, K),
            in place of a probability volume (the INR evaluated at the samples:
            refinement path (b)), or None.
    """

    half: Tensor
    volumes: Tensor | None
    labels: Tensor | None
    probabilities: Tensor | None
    weights: Tensor
    lo: Tensor
    inv_width: Tensor
    gamma: Tensor
    enabled: list[bool]
    tint: Tensor
    lut_colours: Tensor
    lut_opacities: Tensor
    ramp: tuple[float, float, float, float]
    dt: float
    background: Tensor
    field: Callable[[Tensor], Tensor] | None = None

    @classmethod
    def build(cls, shape, spacing, settings: RenderSettings, volumes=None, labels=None, probabilities=None,
              weights=None, lut_colours=None, lut_opacities=None, dtype=torch.float64, device="cpu",
              field=None) -> TorchScene:
        """Tensors from settings and arrays; tensors given here are used as they are (autograd flows to them).

        Args:
            shape: (X, Y, Z); spacing: (3,).
            volumes, labels, probabilities: as :func:`neumours.render.render` (arrays or tensors).
            weights, lut_colours, lut_opacities: override the settings' values (e.g. leaf
                tensors with ``requires_grad``).
        """
        def t(x):
            return torch.as_tensor(x, dtype=dtype, device=device)

        windows = settings.windows
        tf = settings.transfer
        return cls(
            half=t(volume_box(shape, spacing)),
            volumes=None if volumes is None else t(volumes),
            labels=None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=device),
            probabilities=None if probabilities is None else t(probabilities),
            weights=t([w.weight for w in windows]) if weights is None else t(weights),
            lo=t([w.lo for w in windows]),
            inv_width=t([1.0 / (w.hi - w.lo) for w in windows]),
            gamma=t([w.gamma for w in windows]),
            enabled=[bool(w.enabled) for w in windows],
            tint=t([w.tint for w in windows]),
            lut_colours=t(settings.lut.colours) if lut_colours is None else t(lut_colours),
            lut_opacities=t(settings.lut.opacities) if lut_opacities is None else t(lut_opacities),
            ramp=(tf.density_scale, tf.density_lo, 1.0 / (tf.density_hi - tf.density_lo), tf.brightness),
            dt=float(settings.step),
            background=t(settings.background),
            field=field,
        )


def camera_rays(camera: Camera, dtype=torch.float64, device="cpu") -> tuple[Tensor, Tensor]:
    """(H * W, 3) origins and unit directions through the pixel centres, row-major from the top.

    Made on ``device`` (the formula of :class:`~neumours.render.camera.Camera`), so
    a GPU peer does not pay for host-side ray generation.
    """
    forward, right, up = (torch.as_tensor(v, dtype=dtype, device=device) for v in camera.basis())
    s = math.tan(math.radians(camera.fov_y_deg) / 2)
    cols = torch.arange(camera.width, dtype=dtype, device=device)
    rows = torch.arange(camera.height, dtype=dtype, device=device)
    x = (2.0 * (cols + 0.5) / camera.width - 1.0) * (s * camera.aspect)
    y = (1.0 - 2.0 * (rows + 0.5) / camera.height) * s
    directions = forward + x[None, :, None] * right + y[:, None, None] * up
    directions = (directions / directions.norm(dim=-1, keepdim=True)).reshape(-1, 3)
    origins = torch.as_tensor(camera.eye, dtype=dtype, device=device).expand_as(directions)
    return origins, directions


def _ramp(u: Tensor) -> Tensor:
    """clip(u, 0, 1) with derivative 0 at and outside both ends (as the kernel)."""
    zero = torch.zeros_like(u)
    return torch.where(u <= 0, zero, torch.where(u >= 1, torch.ones_like(u), u))


def _sample(volume: Tensor, grid: Tensor, mode: str) -> Tensor:
    """(C, X, Y, Z) volume at (N, 3) grid_sample coordinates -> (N, C)."""
    out = F.grid_sample(volume[None], grid[None, :, None, None, :], mode=mode, padding_mode="border",
                        align_corners=True)
    return out[0, :, :, 0, 0].transpose(0, 1)


def _medium(scene: TorchScene, points: Tensor) -> tuple[Tensor, Tensor]:
    """Extinction (N,) and emission (N, 3) at (N, 3) box points."""
    grid = (points / scene.half).flip(-1)  # grid_sample wants (z, y, x) for an (X, Y, Z) volume
    sigma = points.new_zeros(points.shape[0])
    emission = points.new_zeros(points.shape[0], 3)
    if scene.volumes is not None and any(scene.enabled):
        samples = _sample(scene.volumes, grid, "bilinear")
        x = _ramp((samples - scene.lo) * scene.inv_width)
        positive = x > 0
        y = torch.where(positive, torch.where(positive, x, torch.ones_like(x)) ** scene.gamma, torch.zeros_like(x))
        mask = torch.tensor(scene.enabled, device=points.device)
        wy = torch.where(mask, scene.weights * y, torch.zeros_like(y))
        intensity = wy.sum(-1)
        scale, lo, inv, brightness = scene.ramp
        sigma = scale * _ramp((intensity - lo) * inv)
        emission = (sigma * brightness)[:, None] * (wy @ scene.tint)
    if scene.labels is not None or scene.probabilities is not None or scene.field is not None:
        if scene.field is not None:
            probs = scene.field(points)
        elif scene.labels is not None:
            nearest = _sample(scene.labels[None].to(points.dtype), grid, "nearest")[:, 0]
            probs = F.one_hot(nearest.round().long(), scene.lut_opacities.shape[0]).to(points.dtype)
        else:
            probs = _sample(scene.probabilities, grid, "bilinear")
        weighted = probs * scene.lut_opacities
        sigma = sigma + weighted.sum(-1)
        emission = emission + weighted @ scene.lut_colours
    return sigma, emission


def march_rays(scene: TorchScene, origins: Tensor, directions: Tensor, check_every: int = 8) -> tuple[Tensor, Tensor]:
    """Composite rays front to back (docs/method.md eq. 1-3), all rays in lockstep.

    Args:
        scene: from :meth:`TorchScene.build`.
        origins, directions: (N, 3), unit directions.
        check_every: stop the loop early when no ray is active, checked every
            this many steps (each check synchronises a GPU).

    Returns:
        ``(colour (N, 3), transmittance (N,))``: the pixel colour
        C_N + T_N * background and T_N.
    """
    with torch.no_grad():
        inv = 1.0 / directions
        t0 = (-scene.half - origins) * inv
        t1 = (scene.half - origins) * inv
        t_enter = torch.clamp(torch.fmin(t0, t1).amax(-1), min=0.0)
        t_exit = torch.fmax(t0, t1).amin(-1)
        hit = t_exit > t_enter
        span = float((t_exit - t_enter)[hit].max()) if bool(hit.any()) else 0.0
    dt = scene.dt
    steps = int(math.ceil(span / dt)) + 1
    colour = origins.new_zeros(origins.shape[0], 3)
    transmittance = origins.new_ones(origins.shape[0])
    alive = hit
    for i in range(steps):
        t = t_enter + (i + 0.5) * dt
        active = alive & (t < t_exit)
        if i % check_every == 0 and not bool(active.any()):
            break
        sigma, emission = _medium(scene, origins + t[:, None] * directions)
        depth = sigma * dt
        small = depth < _SMALL_DEPTH
        safe_sigma = torch.where(small, torch.ones_like(sigma), sigma)
        alpha_over_sigma = torch.where(small, torch.full_like(sigma, dt), -torch.expm1(-depth) / safe_sigma)
        weight = torch.where(active, transmittance * alpha_over_sigma, torch.zeros_like(sigma))
        colour = colour + weight[:, None] * emission
        transmittance = torch.where(active, transmittance * torch.exp(-depth), transmittance)
        alive = alive & ~(active & (transmittance < MIN_TRANSMITTANCE))
    return colour + transmittance[:, None] * scene.background, transmittance


def render_reference(scene: TorchScene, camera: Camera) -> tuple[Tensor, Tensor]:
    """The image (H, W, 3) and transmittance (H, W) of ``scene`` seen by ``camera``."""
    origins, directions = camera_rays(camera, scene.half.dtype, scene.half.device)
    colour, transmittance = march_rays(scene, origins, directions)
    return colour.reshape(camera.height, camera.width, 3), transmittance.reshape(camera.height, camera.width)


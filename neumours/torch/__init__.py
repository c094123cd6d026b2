"""Neumours as torch building blocks: the INR, volume caching and the raymarcher as autograd functions.

    from neumours.torch import INRModule, cache, render, render_inr
    net = INRModule.load("run/last.safetensors", device)
    probs = cache(net, volumes)                                  # (4, X, Y, Z), path (a)
    image = render(probs, camera, settings, spacing=spacing)     # (H, W, 3)
    loss = my_loss(image); loss.backward(); optimizer.step()     # gradients reach net's parameters

Every forward and backward is the project's Slang kernels (no second implementation);
``inr`` (:class:`INRModule`), ``cache`` (:func:`cache`), ``render`` (:func:`render`,
:func:`render_inr`), ``exchange`` (tensors <-> device buffers, stream order) and
``boundary`` (a distance-aware loss: :func:`boundary_loss`, :func:`signed_distance`).
docs/torch.md shows the whole API.
"""

from neumours.torch.boundary import boundary_loss, signed_distance
from neumours.torch.cache import cache
from neumours.torch.inr import INRModule
from neumours.torch.render import render, render_inr

__all__ = ["INRModule", "boundary_loss", "cache", "render", "render_inr", "signed_distance"]

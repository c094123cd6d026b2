"""``neumours view``: an interactive browser viewer in which a correction updates the INR live.

- :mod:`~neumours.viewer.session`: the device side (open case, caches, renders, corrections);
- :mod:`~neumours.viewer.worker`: the one thread that owns the device and serialises its work;
- :mod:`~neumours.viewer.protocol`: checked messages and volume crops of the WebSocket;
- :mod:`~neumours.viewer.encode`: frames to JPEG (nvJPEG on CUDA, Pillow elsewhere);
- :mod:`~neumours.viewer.server`: the aiohttp application (page, volumes, WebSocket, token);
- ``static/``: the page, and NiiVue (``@niivue/niivue``, BSD-2-Clause) vendored at a pinned version.

The server's dependencies are the ``view`` extra: ``pip install 'neumours[view]'``.
"""

"""``neumours view``: an interactive browser viewer in which a correction updates the INR live.

- :mod:`~neumours.viewer.session`: the device side (checkpoint, open case, refinements, undo, save);
- :mod:`~neumours.viewer.case_store`: the open case (device volumes, caches, what the page reads);
- :mod:`~neumours.viewer.corrections`: pending corrections per case and the history of refinements;
- :mod:`~neumours.viewer.renderer`: frames of the 3-D view within a render-time budget;
- :mod:`~neumours.viewer.worker`: the one thread that owns the device and serialises its work;
- :mod:`~neumours.viewer.protocol`: checked messages and volume crops of the WebSocket;
- :mod:`~neumours.viewer.encode`: frames to JPEG (nvJPEG on CUDA, Pillow elsewhere);
- :mod:`~neumours.viewer.server`: the aiohttp application (page, volumes, WebSocket, token);
- ``static/``: the page, and NiiVue (``@niivue/niivue``, BSD-2-Clause) vendored at a pinned version.

The server's dependencies are the ``view`` extra: ``pip install 'neumours[view]'``.
"""

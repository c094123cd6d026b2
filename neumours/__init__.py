"""Neumours: implicit neural tumour representations inside a differentiable renderer.

Packages, from the bottom layer up (docs/architecture.md):

- ``device``: slangpy devices, compiled Slang kernels (``load_kernel``), buffers;
- ``data``: NIfTI reading and writing, case layouts, normalisation, splits, the phantom;
- ``kernels``: one thin wrapper per Slang compute entry point;
- ``model``: the INR (config, flat parameters, torch bridge, inputs, Slang forward and
  backward, checkpoints, torch reference);
- ``render``: the differentiable volume raymarcher;
- ``infer``: volume caching, segmentation, denoising;
- ``eval``: Dice, HD95 and evaluation reports;
- ``train``: the training loop, its configuration, loss, sampler, optimisers and curves;
- ``refine``: render-loss refinement of a trained INR from rendered views;
- ``cli``: the ``neumours`` command.

Modules: ``conventions`` (modality and class order, sizes), ``errors`` (the exceptions the
CLI prints as one line), ``atomic`` (write-then-rename), ``outputs`` (output checks before
work), ``regions`` (evaluation regions, label colours), ``figures``, ``summary`` (case
summaries), ``demo`` (``neumours demo``). The method: docs/method.md.
"""

from neumours.errors import DeviceUnavailableError, NeumoursDataError, NeumoursError

__version__ = "0.1.0"

__all__ = ["NeumoursError", "NeumoursDataError", "DeviceUnavailableError", "__version__"]

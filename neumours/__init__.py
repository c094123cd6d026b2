"""Neumours: implicit neural tumour representations inside a differentiable renderer.

Subpackages: ``neumours.device`` (slangpy devices and the kernel cache),
``neumours.data`` (NIfTI I/O, layouts, normalisation, splits, phantom),
``neumours.model`` (Fourier encoding, INR), ``neumours.cli`` (the ``neumours`` command).
"""

from neumours.errors import DeviceUnavailableError, NeumoursDataError, NeumoursError

__version__ = "0.1.0"

__all__ = ["NeumoursError", "NeumoursDataError", "DeviceUnavailableError", "__version__"]

"""Inference: volume caching on the device (``cache``), brain z-score on the device
(``normalise``), whole-case segmentation and NIfTI writing (``segment``), and
post-processing of label volumes (``denoise`` with scipy on the host,
``denoise_device`` with the same result on the device), test-time flips (``tta``),
probability smoothing (``smooth``) before the arg-max, and the backward passes
from class probabilities to the weights (``backprop``: the cache's; ``ray_field``:
the INR rendered at ray samples and its backward)."""

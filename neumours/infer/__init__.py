"""Inference: volume caching on the device (``cache``), brain z-score on the device
(``normalise``), whole-case segmentation and NIfTI writing (``segment``), and
post-processing of label volumes (``denoise`` with scipy on the host,
``denoise_device`` with the same result on the device), test-time flips (``tta``) and
probability smoothing (``smooth``) before the arg-max."""

"""Inference: volume caching on the device (``cache``), brain z-score on the device
(``normalise``), whole-case segmentation and NIfTI writing (``segment``), and
post-processing of label volumes (``denoise``)."""

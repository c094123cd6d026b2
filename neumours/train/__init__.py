"""Training the Slang INR as docs/method.md (paper Table I) describes.

``config`` (TrainConfig, presets, TOML; ``python -m neumours.train.config``
regenerates docs/configuration.md), ``loss`` (DeviceLoss), ``sampler``
(PointSampler), ``pool`` (CasePool: training cases on the device), ``optim``
(AdamW, Muon, learning-rate schedule), ``trainer`` (Trainer, ``train``: the loop,
checkpoints, metrics), ``validate`` (Dice per class on the validation cases),
``curves`` (training-curve figures), ``reference`` (the loss in float64 torch),
``augment`` (AugmentConfig, Augmenter: the ``[augment]`` section and its per-case draws),
``augment_reference`` (the augmentation kernel in float64 numpy), ``device_sampler``
(DeviceSampler: the training points drawn on the device; ``reference_points`` in numpy),
``philox`` (the Philox4x32-10 generator in numpy, the reference of ``slang/random.slang``).
"""

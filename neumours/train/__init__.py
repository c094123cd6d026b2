"""Training the Slang INR as docs/method.md (paper Table I) describes.

``config`` (TrainConfig, presets, TOML; ``python -m neumours.train.config``
regenerates docs/configuration.md), ``loss`` (DeviceLoss), ``sampler``
(PointSampler), ``pool`` (CasePool: training cases on the device), ``optim``
(AdamW, Muon, learning-rate schedule), ``trainer`` (Trainer, ``train``: the loop,
checkpoints, metrics), ``validate`` (Dice per class on the validation cases),
``curves`` (training-curve figures), ``reference`` (the loss in float64 torch).
"""

"""Hyper-parameter sweeps with k-fold cross-validation on Ray Tune (``neumours sweep``).

``space`` (SPACE.toml parsed and checked), ``folds`` (the sweep's k folds),
``settings`` (what a sweep folder holds), ``resources`` (GPUs and each trial's
share), ``trainable`` (one trial: a configuration on every fold), ``progress``
(terminal output, Tune's end of each trial), ``results`` (results.csv,
summary.md, best_config.toml), ``figure`` (sweep.png) and ``runner`` (Ray start,
Tuner, resume). Ray is imported only where it is used, so everything but
running trials works without the ``sweep`` extra.
"""

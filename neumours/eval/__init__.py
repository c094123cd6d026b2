"""Evaluation: Dice and HD95 per BraTS region (``metrics``) and the ``neumours evaluate``
command with its per-case CSV and Table III-style summary (``evaluate``)."""

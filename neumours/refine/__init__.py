"""Render-loss refinement: correcting a trained INR's weights from rendered views of one case.

A sibling of :mod:`neumours.train`: an optimisation loop over the INR's
weights, whose loss is an image loss on views rendered by
:mod:`neumours.render`, written in torch over :mod:`neumours.torch`.
``loop`` (:func:`refine`, :class:`Anchor`), ``cache_path`` (gradient path (a),
through the volume cache), ``direct_path`` (path (b), the INR at the ray
samples), ``masks`` (2-D tumour / not tumour / don't care targets),
``image_loss`` (MSE with don't-care pixels, in torch), ``voxel_loss`` (painted
slice corrections), ``reference`` (both paths in float64 torch: tests and
benchmark peer), ``checkpoint`` (:func:`refine_checkpoint`: the ``refine``
command as one call, returning a report), ``targets`` (reading ``targets.npz``).
"""

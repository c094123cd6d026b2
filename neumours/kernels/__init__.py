"""One thin Python wrapper per Slang compute entry point.

Every ``[shader("compute")]`` function in ``slang/<name>_kernels.slang`` is
dispatched by exactly one function of ``neumours.kernels.<name>`` (gemm's
``gemm_kernels.slang`` by :func:`neumours.kernels.gemm.gemm`), which checks
that the buffers are large enough for the requested counts, passes the
compile-time constants (sizes come from Python only) and fills the file's one
``ParameterBlock params``. Tests, benchmarks and the rest of the package call
these wrappers, never ``load_kernel`` directly, as gsplat's ``_wrapper.py``
does for its CUDA kernels.

Modules: ``accumulate`` (scatter_add), ``encoding`` (Fourier features and their
gradient), ``gemm`` (the dense-layer product), ``patch`` (INR inputs from
volumes), ``normalise`` (brain z-score), ``loss`` (training loss),
``probabilities`` (arg-max, softmax and its gradient), ``raymarch`` (render
forward/backward), ``ray_samples`` (the INR evaluated along rays), ``denoise``
(connected components, class islands, holes and the nearest-voxel transform of
denoising on the device), ``tensor_gemm`` and ``bf16`` (the tensor-core product and
its bf16 weight copies), ``augment`` (training-time augmentation of the INR's inputs),
``sampler`` (training points drawn with the Philox4x32-10 generator, and its raw words), ``optim``
(gradient norm, clipping, non-finite guard and AdamW on the device);
``checks`` (buffer-size and device-feature checks shared by the wrappers), ``epilogue``
(what ``gemm`` and ``tensor_gemm`` do with their sums: one type, one check).
"""

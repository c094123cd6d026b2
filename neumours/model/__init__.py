"""The INR of docs/method.md and its parts.

``config`` (INRConfig: the sizes, defined once), ``params`` (the flat parameter
vector's layout and initialisation), ``bridge`` (that vector and its gradient
shared with torch optimisers), ``encoding`` (Fourier features through the Slang
kernel, for tests and scripts), ``inputs`` (CaseVolumes: normalised cases on the
device, and the INR's inputs read from them), ``inr`` (the network as Slang
kernels, forward and backward), ``network`` (its layers and the products of both
passes, described once), ``backend`` with ``fma`` and ``tensor_core`` (the fp32
and bf16 backends that run those products), ``checkpoint`` (safetensors files),
``reference`` (float64 / torch references: the tests' ground truth and the
benchmarks' peer).
"""

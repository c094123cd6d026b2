"""The INR and its parts: the Fourier encoding (``encoding``) and plain
float64/torch reference implementations used by tests and benchmarks
(``reference``)."""

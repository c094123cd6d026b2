"""Training the Slang INR as docs/method.md (paper Table I) describes: loss, sampling,
case pool, optimisers and schedule, validation, checkpoints and curves."""

"""Training: the loop (`trainer`), the run pipeline that builds, trains and registers an expert (`pipeline`), its learning-curve sinks (`tracking`) and the multi-GPU plumbing (`distributed`)."""

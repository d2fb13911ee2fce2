"""ANE graphs built directly with coremltools' MIL builder from numpy weights (no torch)."""

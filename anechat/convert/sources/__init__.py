"""Readers that turn checkpoint formats into a `Checkpoint` (HF weight names, float32, lazy)."""

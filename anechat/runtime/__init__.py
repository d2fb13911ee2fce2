"""Runtimes for ANEMLL-layout model directories: Core ML on macOS, the portable numpy executor anywhere."""

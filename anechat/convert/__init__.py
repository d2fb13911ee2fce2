"""`anechat convert`: checkpoints (GGUF, HF safetensors) to ANEMLL-layout Core ML chunks, without torch."""

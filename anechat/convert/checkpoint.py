"""A checkpoint as the converter sees it: a normalised config, weights under HF names, tokenizer files.

Weight names follow Hugging Face's Llama/Qwen layout whatever the source format:
  model.embed_tokens.weight                       (vocab, hidden)
  model.layers.{i}.input_layernorm.weight         (hidden,)
  model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (out, in)   HF order (GGUF rope permutation undone)
  model.layers.{i}.self_attn.{q,k,v}_proj.bias    (out,)       when config.attention_bias
  model.layers.{i}.self_attn.{q,k}_norm.weight    (head_dim,)  when config.qk_norm
  model.layers.{i}.post_attention_layernorm.weight (hidden,)
  model.layers.{i}.mlp.{gate,up,down}_proj.weight (out, in)
  model.norm.weight                               (hidden,)
  lm_head.weight                                  (vocab, hidden)   always present; tied models alias the embedding
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anechat.arch.base import ModelConfig
from anechat.errors import ConversionError


@dataclass
class Checkpoint:
    config: ModelConfig
    source: Path
    # name -> loader returning float32 (dequantized) array; loaders keep memory low for big models
    loaders: dict[str, Callable[[], np.ndarray]]
    # file name -> content, written verbatim into the converted model dir
    # (at least "tokenizer.json" and "tokenizer_config.json")
    tokenizer_files: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return list(self.loaders)

    def has(self, name: str) -> bool:
        return name in self.loaders

    def tensor(self, name: str) -> np.ndarray:
        try:
            loader = self.loaders[name]
        except KeyError:
            raise ConversionError(f"{self.source.name}: missing tensor {name}") from None
        return np.asarray(loader(), dtype=np.float32)

    def layer(self, i: int, suffix: str) -> np.ndarray:
        return self.tensor(f"model.layers.{i}.{suffix}")


def load_checkpoint(source: Path) -> Checkpoint:
    """A GGUF file or a Hugging Face model directory."""
    source = Path(source)
    if source.is_dir():
        from anechat.convert.sources.hf import load_hf_dir

        return load_hf_dir(source)
    if source.is_file():
        from anechat.convert.sources.gguf import load_gguf

        return load_gguf(source)
    raise ConversionError(f"{source}: no such file or directory")

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
The Checkpoint class lives in anechat.arch.base: the family files take one.
"""

from __future__ import annotations

from pathlib import Path

from anechat.arch.base import Checkpoint
from anechat.errors import ConversionError

__all__ = ["Checkpoint", "load_checkpoint"]


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

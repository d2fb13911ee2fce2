"""tokenizer.json / tokenizer_config.json rebuilt from a GGUF's tokenizer metadata, so a model converted
from a GGUF carries its own tokenizer and chat template like one converted from a HF directory."""

from __future__ import annotations

import json
from typing import Any

from anechat.errors import ConversionError

# llama.cpp's tokenizer.ggml.pre names → the pre-tokenizer split regex HF uses for that family.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("smollm", "gpt2", "default", "starcoder", "refact"):
        parts: list[pre_tokenizers.PreTokenizer] = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if pre in ("smollm", "starcoder", "refact"):
            parts.insert(0, pre_tokenizers.Digits(individual_digits=True))
        return pre_tokenizers.Sequence(parts)
    regex = {"llama-bpe": LLAMA3_SPLIT, "llama3": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT, "smaug-bpe": LLAMA3_SPLIT}.get(pre)
    if regex is None:
        raise ConversionError(f"GGUF tokenizer pre-tokenizer {pre!r} is not supported")
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False), byte_level]
    )


def _byte_level_bpe(meta: dict[str, Any], tokens: list[str], types: list[int]):
    from tokenizers import AddedToken, Tokenizer, decoders, models

    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(user)
    return tok


def _sentencepiece_bpe(meta: dict[str, Any], tokens: list[str], types: list[int]):
    """llama.cpp's 'llama' vocabulary (SentencePiece BPE: pieces with "▁" for spaces, scores, byte pieces).
    The GGUF has no merges: a piece's merges are its splits into two pieces, ranked by its score, which is
    the order SentencePiece merges in. User-defined pieces (runs of spaces or newlines) are matched whole."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    scores = meta.get("tokenizer.ggml.scores") or [-float(i) for i in range(len(tokens))]
    # Whitespace pieces are stored with real spaces; the model sees them as "▁" after normalisation.
    pieces = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    rank = {t: i for i, t in enumerate(pieces)}
    found = []
    for t, score in zip(pieces, scores):
        for k in range(1, len(t)):
            left, right = t[:k], t[k:]
            if left in rank and right in rank:
                found.append((-score, rank[left], rank[right], left, right))
    found.sort()
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    tok = Tokenizer(models.BPE(
        vocab=rank, merges=[(a, b) for *_, a, b in found], fuse_unk=True, byte_fallback=True,
        unk_token=pieces[unk] if isinstance(unk, int) and 0 <= unk < len(pieces) else None,
    ))
    if not meta.get("tokenizer.ggml.add_space_prefix", True):
        tok.normalizer = normalizers.Replace(" ", "▁")
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(pieces, types) if ty == TOKEN_CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=True) for t, ty in zip(pieces, types) if ty == TOKEN_USER_DEFINED])
    return tok


def build_tokenizer_files(meta: dict[str, Any], context_length: int) -> dict[str, str]:
    kind = meta.get("tokenizer.ggml.model")
    builders = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}
    if kind not in builders:
        raise ConversionError(
            f"GGUF tokenizer model {kind!r} is not supported yet (anechat rebuilds 'gpt2' byte-level BPE and "
            "'llama' SentencePiece tokenizers)"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    tok = builders[kind](meta, tokens, types)

    def name(key: str) -> str | None:
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "unk_token": name("tokenizer.ggml.unknown_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
    }
    if meta.get("tokenizer.chat_template"):  # none: a base model, which continues text (ChatTokenizer)
        config["chat_template"] = meta.get("tokenizer.chat_template")
    return {"tokenizer.json": tok.to_str(), "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False)}

"""A model directory's tokenizer and chat template (tokenizers library + sandboxed jinja2)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

from anechat.engine.detok import IncrementalDetokenizer
from anechat.engine.template import Cancelled, render_chat_template
from anechat.errors import ModelLoadError
from anechat.runtime.memory import release_free_memory
from anechat.signals import Abandoned, in_background

# End-of-turn markers of common chat formats: generation stops on them even when the config names only
# the document-level eos.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>", "</s>")


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def continuation_text(messages: list[dict]) -> str:
    """A model without a chat template is a base model: it continues text and knows no turns (role labels
    made up here would only be text it never saw in training). The conversation is one document: the
    system prompt as its first paragraph, each reply continuing the message before it exactly, a new
    message on a line of its own."""
    text = ""
    for m in messages:
        content = m["content"]
        if m["role"] == "system":
            text += content.strip() + "\n\n" if content.strip() else ""
        elif m["role"] == "assistant" or not text or text.endswith(("\n", " ")):
            text += content
        else:
            text += "\n" + content
    return text


# Shorter texts take milliseconds to tokenize: not worth a thread.
_TOKENIZE_IN_PLACE = 1 << 14


class TooLong(ValueError):
    """A text longer than the caller's bound, refused before tokenizing."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


class ChatTokenizer:
    def __init__(self, tokenizer, config: dict, generation: dict, template: str | None,
                 template_source: str = "the chat template") -> None:
        self.tok = tokenizer
        self.config = config
        self.template = template
        self.template_source = template_source  # named in a template's errors: which file to fix
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.bos_token_id = self._id(self.bos_token)
        eos = {self._id(self.eos_token)}
        gen_eos = generation.get("eos_token_id")
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        eos.update(self._id(t) for t in END_OF_TURN)
        self.eos_token_ids = frozenset(i for i in eos if isinstance(i, int))
        self.supports_thinking = bool(template and "enable_thinking" in template)
        self.continues_text = not template  # a base model: see continuation_text

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.tok.token_to_id(token)

    @classmethod
    def from_dir(cls, path: Path) -> ChatTokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        tj = path / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(tj))
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: missing tokenizer.json") from None
        except Exception as e:  # noqa: BLE001 — the tokenizers library raises plain Exceptions
            raise ModelLoadError(f"{tj}: unreadable tokenizer ({e})") from None
        finally:
            release_free_memory()  # the JSON parse's garbage: 190 MB resident for Gemma 3 otherwise
        config = _read_json(path / "tokenizer_config.json")
        template = config.get("chat_template")
        if template is not None and not isinstance(template, (str, list)):
            raise ModelLoadError(f"{path / 'tokenizer_config.json'}: chat_template must be text")
        if isinstance(template, list):  # named templates: use the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        source = f"the chat template in {path / 'tokenizer_config.json'}"
        jinja = path / "chat_template.jinja"
        if jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
            source = f"the chat template {jinja}"
        return cls(tokenizer, config, _read_json(path / "generation_config.json"), template, source)

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """An upper bound on the UTF-8 bytes one token stands for, so a text too long for a context can be
        refused without tokenizing it (byte-level and SentencePiece symbols take ≥ the bytes they mean)."""
        return max((len(t.encode("utf-8", "surrogatepass")) for t in self.tok.get_vocab(with_added_tokens=True)), default=1) or 1

    def encode(self, text: str, add_special_tokens: bool = False, cancel=None, max_bytes: int | None = None) -> list[int]:
        """Token ids of `text`. The tokenizers library's encode() holds the GIL for its whole run (seconds for
        a long text: no signal handler, no event loop answering /health meanwhile); encode_batch() releases
        it. With `cancel` (a threading.Event) a long text is tokenized on a thread of its own and the caller
        leaves with template.Cancelled when it is set. A text of more than `max_bytes` UTF-8 bytes raises
        TooLong untokenized."""
        if max_bytes is not None:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > max_bytes:
                raise TooLong(size)

        def work() -> list[int]:
            return self.tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

        if cancel is None or len(text) < _TOKENIZE_IN_PLACE:
            return work()
        try:
            return in_background(work, cancel, name="anechat-tokenize")
        except Abandoned:
            raise Cancelled() from None

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool | None = None,
               cancel=None) -> str:
        """The conversation as the model's template writes it (bounded: see engine.template); `cancel`, a
        threading.Event, stops a rendering in progress with template.Cancelled."""
        if not self.template:
            return continuation_text(messages)
        return render_chat_template(
            self.template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            enable_thinking=enable_thinking,
            source=self.template_source,
            cancel=cancel,
        )

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool | None = None,
                    cancel=None, max_bytes: int | None = None) -> list[int]:
        """The prompt ids of a conversation; `cancel` and `max_bytes` as for render() and encode()."""
        ids = self.encode(self.render(messages, add_generation_prompt, enable_thinking, cancel), cancel=cancel,
                          max_bytes=max_bytes)
        if self.config.get("add_bos_token") and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids.insert(0, self.bos_token_id)
        return ids

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tok, skip_special_tokens)

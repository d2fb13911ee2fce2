"""The OpenAI wire format: request bodies checked field by field into plain requests, errors in OpenAI's
JSON shape with their HTTP status, and the response and stream-chunk objects clients parse.

Checking by hand (no schema library) keeps each error one sentence naming the parameter, as OpenAI's do,
and lets unknown fields through (clients send extras the API grew after this was written)."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from anechat.engine.sampling import SamplingParams
from anechat.errors import UsageError


class ApiError(Exception):
    """An error the client gets as {"error": {...}} with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class GenerationRequest:
    kind: str  # "chat" | "completion"
    model: str | None
    stream: bool
    include_usage: bool
    overrides: dict[str, Any]  # sampling keys the request sets; the server's defaults fill the rest
    stop: list[str]
    cache_prompt: bool
    messages: list[dict] = field(default_factory=list)  # chat
    prompt: str | list[int] = ""  # completion: text or token ids
    enable_thinking: bool | None = None

    def params(self, defaults: SamplingParams) -> SamplingParams:
        params = defaults.merged(**self.overrides)
        try:
            params.validate()
        except UsageError as e:  # the same range checks pipe mode applies to its flags
            key = str(e).split(" ", 1)[0]
            raise bad(str(e), param=key) from None
        return params


# Cheap bounds, checked before any expensive step. No context anechat runs needs a larger body (1 MiB is more
# than 32k tokens of text; the rest is room for a long history that is cut to fit); no OpenAI body nests
# deeper than a dozen levels; a million values is more than any context's worth of messages or token ids.
MAX_BODY_BYTES = 8 << 20
MAX_DEPTH = 64
MAX_VALUES = 1_000_000


class _Refused(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object, parsed within MAX_DEPTH and MAX_VALUES.

    The structure is parsed in Python (strings still in C): the C parser holds the GIL for the whole body,
    over a second for 8 MiB of `[[],[],…]`, and the event loop answering /health would wait that long; the
    Python one lets it in every few milliseconds, and stops at the first value past a bound."""
    try:
        body = _bounded_loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad(f"the request body is not valid JSON (not UTF-8 at byte {e.start})") from None
    except _Refused as e:
        raise bad(str(e), code=e.code) from None
    except RecursionError:
        raise bad(f"the request body nests deeper than {MAX_DEPTH} levels", code="too_deep") from None
    except ValueError as e:
        raise bad(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    return body


def _bounded_loads(text: str) -> Any:
    import json.scanner as js

    decoder: Any = json.JSONDecoder()  # its parse_* and scan_once are internals typeshed does not list
    parse_object_in, parse_array_in = decoder.parse_object, decoder.parse_array
    depth = 0
    values = 0

    def counted(scan_once):
        def scan(string, idx):
            nonlocal values
            values += 1
            if values > MAX_VALUES:
                raise _Refused(f"the request body holds more than {MAX_VALUES:,} JSON values", "too_many_values")
            return scan_once(string, idx)
        return scan

    def enter() -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise _Refused(f"the request body nests deeper than {MAX_DEPTH} levels", "too_deep")

    def parse_object(s_and_end, strict, scan_once, *rest):
        nonlocal depth
        enter()
        try:
            return parse_object_in(s_and_end, strict, counted(scan_once), *rest)
        finally:
            depth -= 1

    def parse_array(s_and_end, scan_once, *rest):
        nonlocal depth
        enter()
        try:
            return parse_array_in(s_and_end, counted(scan_once), *rest)
        finally:
            depth -= 1

    decoder.parse_object, decoder.parse_array = parse_object, parse_array
    decoder.scan_once = js.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(text)


def check_fits(req: GenerationRequest, context: int, token_bytes: int) -> None:
    """Refuse, before rendering or tokenizing anything, what cannot fit the context whatever the tokenizer
    makes of it: more messages than tokens (every chat template spends at least one token on each), a last
    message or a prompt of more bytes than `context` tokens of at most `token_bytes` each can stand for, more
    prompt ids than the context. An older part of a conversation that does not fit is dropped later, as pipe
    mode does."""
    if req.kind == "chat":
        if len(req.messages) > context:
            raise bad(f"{len(req.messages)} messages cannot fit the model's context of {context} tokens (each message "
                      "takes at least one); send the recent part of the conversation", param="messages",
                      code="context_length_exceeded")
        size = _utf8_size(req.messages[-1].get("content")) if req.messages else 0
        if size > context * token_bytes:
            raise bad(too_long(size, context), param="messages", code="context_length_exceeded")
    elif isinstance(req.prompt, str):
        size = _utf8_size(req.prompt)
        if size > context * token_bytes:
            raise bad(too_long(size, context), param="prompt", code="context_length_exceeded")
    elif len(req.prompt) >= context:
        raise bad(f"the prompt is {len(req.prompt)} tokens but the model's context holds {context}; shorten it",
                  param="prompt", code="context_length_exceeded")


def too_long(size: int, context: int) -> str:
    return f"the message is {size} bytes, more than the model's context of {context} tokens can hold; shorten it"


def _utf8_size(text: Any) -> int:
    return len(str(text or "").encode("utf-8", "surrogatepass"))


def _number(body: dict, key: str, lo: float, hi: float) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"{key} must be a number, not {json.dumps(v)[:40]}", param=key, code="invalid_type")
    if not lo <= v <= hi:
        raise bad(f"{key} = {v} is out of range [{lo:g}, {hi:g}]", param=key)
    return float(v)


def _integer(body: dict, key: str, lo: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{key} must be an integer, not {json.dumps(v)[:40]}", param=key, code="invalid_type")
    if lo is not None and v < lo:
        raise bad(f"{key} = {v} must be at least {lo}", param=key)
    return v


def _flag(body: dict, key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"{key} must be true or false", param=key, code="invalid_type")
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop must be a string or a list of strings", param="stop", code="invalid_type")
    if len(stops) > 4:
        raise bad(f"stop takes at most 4 sequences, not {len(stops)}", param="stop")
    return [s for s in stops if s]


# Parameters the engine cannot honour: refused when set to anything but their no-op value, so a client is
# never silently given something other than what it asked for.
_UNSUPPORTED = {
    "n": 1, "best_of": 1, "echo": False, "logprobs": None, "top_logprobs": None, "logit_bias": None,
    "frequency_penalty": 0, "presence_penalty": 0, "suffix": None, "tools": None, "functions": None,
    "tool_choice": None, "function_call": None,
}


def _refuse_unsupported(body: dict) -> None:
    for key, neutral in _UNSUPPORTED.items():
        v = body.get(key)
        if v is None or v == neutral or v in ({}, [], False, "none"):
            continue
        raise bad(f"{key} = {json.dumps(v)[:40]} is not supported by this server", param=key, code="unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") in (None, "text")):
        raise bad("response_format other than text is not supported by this server", param="response_format",
                  code="unsupported_parameter")


def _common(body: dict, kind: str) -> GenerationRequest:
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise bad("model must be a model name (a non-empty string)", param="model", code="invalid_type")
    _integer(body, "n", 1)  # n = 0 is an error; n > 1 is refused as unsupported next
    _refuse_unsupported(body)
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    overrides = {
        "temperature": _number(body, "temperature", 0, 2),
        "top_p": _number(body, "top_p", 0, 1),
        "top_k": _integer(body, "top_k", 0),  # llama-server's extensions, same meaning as pipe mode's flags
        "min_p": _number(body, "min_p", 0, 1),
        "repeat_penalty": _number(body, "repeat_penalty", 0, 10),
        "seed": _integer(body, "seed"),
        "max_tokens": max_tokens,
    }
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options must be an object", param="stream_options", code="invalid_type")
    return GenerationRequest(
        kind=kind,
        model=model.strip() if isinstance(model, str) else None,
        stream=_flag(body, "stream", False),
        include_usage=_flag(options or {}, "include_usage", False),
        overrides={k: v for k, v in overrides.items() if v is not None},
        stop=_stop(body),
        cache_prompt=_flag(body, "cache_prompt", True),
    )


ROLES = {"system", "user", "assistant", "developer", "tool"}


def _content(message: dict, i: int) -> str:
    """A message's text: a string, or OpenAI's list of content parts of which only text ones are accepted."""
    content = message.get("content")
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad(f"messages[{i}].content: only text parts are supported, not {kind!r}",
                          param=f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content",
              code="invalid_type")


def parse_chat(body: dict) -> GenerationRequest:
    req = _common(body, "chat")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {role, content} objects", param="messages",
                  code="invalid_type" if messages is not None else None)
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}, not {json.dumps(role)[:30]}",
                      param=f"messages[{i}].role")
        # OpenAI's newer "developer" role is what chat templates call the system prompt.
        req.messages.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    think = body.get("enable_thinking", (body.get("chat_template_kwargs") or {}).get("enable_thinking")
                     if isinstance(body.get("chat_template_kwargs"), dict) else None)
    if think is not None and not isinstance(think, bool):
        raise bad("enable_thinking must be true or false", param="enable_thinking", code="invalid_type")
    req.enable_thinking = think
    return req


def parse_completion(body: dict) -> GenerationRequest:
    req = _common(body, "completion")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        req.prompt = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        req.prompt = list(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise bad("a batch of several prompts is not supported; send one prompt per request", param="prompt")
    else:
        raise bad("prompt must be a non-empty string or a list of token ids", param="prompt",
                  code="invalid_type" if prompt not in (None, "", []) else None)
    return req


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_object(req: GenerationRequest, rid: str, model: str, text: str, finish: str, use: dict) -> dict:
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice], "usage": use}


def chunk_object(req: GenerationRequest, rid: str, model: str, text: str | None, finish: str | None,
                 first: bool = False) -> dict:
    if req.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(req: GenerationRequest, rid: str, model: str, use: dict) -> dict:
    obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [], "usage": use}


def sse(obj: dict | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()

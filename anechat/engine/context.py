"""Context policy: what goes into a context window that is smaller than the conversation."""

from __future__ import annotations

from anechat.engine.template import TemplateError
from anechat.engine.tokenizer import TooLong
from anechat.errors import UsageError


class PromptTooLong(UsageError):
    """The last message alone leaves no room for an answer in the context window."""


def fit_messages(tokenizer, messages: list[dict], context: int, max_tokens: int, enable_thinking=None,
                 cancel=None) -> tuple[list[int], int]:
    """Prompt ids for the conversation, dropping the oldest turns (never the system prompt or the last
    message) until the prompt leaves room to answer; (ids, number of messages dropped). `cancel` (a
    threading.Event) stops a template rendering in progress.

    A history far longer than the context costs a few renderings of about what fits, not one per dropped
    turn: the kept part is searched from the end, doubling, then halving (a longer suffix never takes fewer
    tokens), and a part whose text alone is too long for the context is passed over without rendering."""
    longest = getattr(tokenizer, "max_token_bytes", None)
    longest = longest if isinstance(longest, int) else None
    size = _bytes(messages[-1]) if messages else 0
    if longest and size > context * longest:
        # cannot fit whatever the tokenizer makes of it: refused without the cost of tokenizing it
        raise PromptTooLong(f"the message is {size} bytes, more than the model's context of {context} tokens can hold; shorten it")
    reserve = min(max_tokens, context // 4)
    system = [m for m in messages[:1] if m.get("role") == "system"]
    rest = messages[len(system) :]
    n = len(rest)
    # Where the kept history may start: whole exchanges, so it never starts with an assistant turn; at
    # worst the last message alone.
    starts = [0] + [i for i in range(1, n - 1) if rest[i].get("role") == "user"] + ([n - 1] if n > 1 else [])
    tail = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        tail[i] = tail[i + 1] + _bytes(rest[i])
    encoded: dict[int, list[int] | None] = {}

    def encode(start: int) -> list[int] | None:
        """The ids, None when the rendering is too long to fit (what the template adds counts too: it is
        not tokenized, which for megabytes would take seconds)."""
        if start not in encoded:
            try:
                encoded[start] = tokenizer.encode_chat(system + rest[start:], enable_thinking=enable_thinking,
                                                       cancel=cancel, max_bytes=context * longest if longest else None)
            except TooLong:
                encoded[start] = None
        return encoded[start]

    def fits(j: int) -> bool:
        if longest and tail[starts[j]] > context * longest:
            return False
        ids = encode(starts[j])
        return ids is not None and len(ids) + reserve <= context

    last = len(starts) - 1
    if fits(0):
        best = 0
    else:
        good, step = last, 1  # `good`: the longest kept part known to fit (or the last message alone)
        bad = 0
        while good - step > bad:
            if not fits(good - step):
                bad = good - step
                break
            good, step = good - step, step * 2
        while good - bad > 1:  # the first fitting start lies in (bad, good]
            mid = (bad + good) // 2
            good, bad = (mid, bad) if fits(mid) else (good, mid)
        best = good
    ids = encode(starts[best])
    if ids is None:
        kept = sum(_bytes(m) for m in system) + tail[starts[best]]
        if longest and 2 * kept > context * longest:
            raise PromptTooLong(f"the messages are {kept} bytes, more than the model's context of {context} tokens "
                                "can hold; shorten them")
        # the template itself wrote the bulk of a prompt no context can hold
        source = getattr(tokenizer, "template_source", "the chat template")
        raise TemplateError(f"{source} turns {kept} bytes of messages into a prompt longer than the model's context "
                            f"of {context} tokens can hold (at most {context * (longest or 0)} bytes)")
    if len(ids) >= context:
        raise PromptTooLong(
            f"the message is {len(ids)} tokens but the model's context holds {context}; shorten it"
        )
    return ids, starts[best]


def _bytes(message: dict) -> int:
    return len(str(message.get("content") or "").encode("utf-8", "surrogatepass"))


def shift_tokens(prompt: list[int], current: list[int], context: int) -> list[int]:
    """When generation fills the context: keep the start of the prompt (system prompt and first turn
    header, at most a quarter of the context) and the most recent half, so the answer can go on."""
    head = prompt[: min(len(prompt), context // 4)]
    tail = current[-(context // 2) :]
    return head + tail

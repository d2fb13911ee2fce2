"""Context policy: what goes into a context window that is smaller than the conversation."""

from __future__ import annotations

from anechat.errors import UsageError


class PromptTooLong(UsageError):
    """The last message alone leaves no room for an answer in the context window."""


def fit_messages(tokenizer, messages: list[dict], context: int, max_tokens: int, enable_thinking=None) -> tuple[list[int], int]:
    """Prompt ids for the conversation, dropping the oldest turns (never the system prompt or the last
    message) until the prompt leaves room to answer; (ids, number of messages dropped)."""
    longest = getattr(tokenizer, "max_token_bytes", None)
    size = len(str(messages[-1].get("content") or "").encode("utf-8", "surrogatepass")) if messages else 0
    if isinstance(longest, int) and size > context * longest:
        # cannot fit whatever the tokenizer makes of it: refused without the cost of tokenizing it
        raise PromptTooLong(f"the message is {size} bytes, more than the model's context of {context} tokens can hold; shorten it")
    reserve = min(max_tokens, context // 4)
    system = [m for m in messages[:1] if m.get("role") == "system"]
    rest = messages[len(system) :]
    dropped = 0
    while True:
        ids = tokenizer.encode_chat(system + rest, enable_thinking=enable_thinking)
        if len(ids) + reserve <= context or len(rest) <= 1:
            break
        # Drop whole exchanges so the history never starts with an assistant turn.
        cut = 1
        while cut < len(rest) - 1 and rest[cut].get("role") != "user":
            cut += 1
        rest, dropped = rest[cut:], dropped + cut
    if len(ids) >= context:
        raise PromptTooLong(
            f"the message is {len(ids)} tokens but the model's context holds {context}; shorten it"
        )
    return ids, dropped


def shift_tokens(prompt: list[int], current: list[int], context: int) -> list[int]:
    """When generation fills the context: keep the start of the prompt (system prompt and first turn
    header, at most a quarter of the context) and the most recent half, so the answer can go on."""
    head = prompt[: min(len(prompt), context // 4)]
    tail = current[-(context // 2) :]
    return head + tail

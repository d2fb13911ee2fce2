"""How a generation's statistics read, for every front end (pipe `-v`, /stats, the REPL footer, the TUI's
status bar): one wording, so the figures a user compares look the same wherever they appear."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anechat.engine.generate import GenerationStats


FEW_NEW_TOKENS = 16


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def first_token(stats: GenerationStats) -> str:
    """Time to first token and prompt speed: the status bar's last part and the REPL footer's tail."""
    if stats.reused_tokens and stats.prefill_tokens < FEW_NEW_TOKENS:
        # After /retry (or any prompt the model mostly holds already) a speed over a handful of tokens is
        # noise: "prefill 1 tok/s" said the model was slow when it had nothing to read.
        return f"TTFT {ms(stats.ttft_s)} · prompt reused"
    return f"TTFT {ms(stats.ttft_s)} · prefill {stats.prefill_tok_s:.0f} tok/s"


def footer(stats: GenerationStats, finish: str) -> str:
    """The REPL's one line after an answer: decode speed first, the finish reason only when unusual."""
    text = f"[{stats.decode_tok_s:.1f} tok/s · {stats.decode_tokens} tok · {first_token(stats)}"
    return text + ("" if finish == "stop" else f" · {finish}") + "]"


def stats_line(stats: GenerationStats, finish: str) -> str:
    """Everything measured, for `-v` and /stats."""
    return (
        f"prompt {stats.prompt_tokens} tok ({stats.reused_tokens} reused) · prefill {stats.prefill_tok_s:.1f} tok/s · "
        f"TTFT {ms(stats.ttft_s)} · decode {stats.decode_tokens} tok at {stats.decode_tok_s:.1f} tok/s · "
        f"host {stats.host_overhead_ms_per_token:.3f} ms/tok · {finish}"
    )

"""A session as Markdown (for reading and sharing) or JSON (lossless, for tools). Message text is copied
verbatim — code fences, unicode and trailing spaces included."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from anechat.errors import AnechatError
from anechat.sessions.store import Message, Session

JSON_FORMAT_VERSION = 1
_ROLE_HEADINGS = {"system": "System", "user": "User", "assistant": "Assistant"}


def iso_utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _stats_line(m: Message) -> str | None:
    parts = []
    if m.tokens is not None:
        parts.append(f"{m.tokens} token{'' if m.tokens == 1 else 's'}")
    if m.tok_per_s is not None:
        parts.append(f"{m.tok_per_s:.1f} tok/s")
    if m.ttft_s is not None:
        parts.append(f"TTFT {m.ttft_s:.2f} s")
    return "_" + " · ".join(parts) + "_" if parts else None


def _message_md(m: Message) -> list[str]:
    heading = _ROLE_HEADINGS.get(m.role, m.role)
    if m.role == "assistant" and m.model:
        heading += f" ({m.model})"
    blocks = [f"## {heading}", m.content]
    if m.writing:
        blocks.append("_(answer still being written when this was exported)_")
    elif m.cut_short:
        blocks.append("_(answer cut short)_")
    if stats := _stats_line(m):
        blocks.append(stats)
    return blocks


def to_markdown(session: Session, messages: Sequence[Message]) -> str:
    meta = [f"- Session: {session.id}", f"- Model: {session.model or '-'}",
            f"- Created: {iso_utc(session.created_at)}", f"- Updated: {iso_utc(session.updated_at)}"]
    if session.settings:
        meta.append("- Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(session.settings.items())))
    blocks = [f"# {session.title or f'Session {session.id}'}", "\n".join(meta)]
    if session.system_prompt:
        blocks += ["## System prompt", session.system_prompt]
    for m in messages:
        blocks += _message_md(m)
    return "\n\n".join(blocks) + "\n"


def to_dict(session: Session, messages: Sequence[Message]) -> dict[str, Any]:
    return {
        "anechat_session": JSON_FORMAT_VERSION,
        "id": session.id,
        "title": session.title,
        "model": session.model,
        "system_prompt": session.system_prompt,
        "settings": session.settings,
        "created_at": iso_utc(session.created_at),
        "updated_at": iso_utc(session.updated_at),
        "messages": [
            {"id": m.id, "role": m.role, "content": m.content, "model": m.model,
             "created_at": iso_utc(m.created_at), "tokens": m.tokens, "tok_per_s": m.tok_per_s,
             "ttft_s": m.ttft_s, "cut_short": m.cut_short and not m.writing}
            | ({"writing": True} if m.writing else {})
            for m in messages
        ],
    }


def to_json(session: Session, messages: Sequence[Message]) -> str:
    return json.dumps(to_dict(session, messages), ensure_ascii=False, indent=2) + "\n"


EXPORTERS = {"md": to_markdown, "json": to_json}


def write_file(path: Path, text: str) -> None:
    """Whole file or nothing: a failed export never leaves half a file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # the cleanup of a failed write must not fail again
            tmp.unlink(missing_ok=True)
        raise AnechatError(f"cannot write {path}: {e.strerror or e}") from None

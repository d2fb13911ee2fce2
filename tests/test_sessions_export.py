"""Markdown and JSON export of a session with code blocks and unicode: exact text, verbatim content."""

import itertools
import json

import pytest

from anechat.sessions.export import to_json, to_markdown
from anechat.sessions.store import Store

CODE_ANSWER = (
    "Here you go:\n\n"
    "```python\n"
    "def grüß(name: str) -> str:\n"
    "    return f\"¡Hola, {name}! 👋\"  \n"  # trailing spaces must survive
    "```\n\n"
    "## not a real heading\n"
    "Done ✓"
)
USER_TEXT = "Écris une fonction 🐍 — 日本語 and עברית, with a tab\there"
T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z; every store write reads the clock once (+1 s)


@pytest.fixture
def session(monkeypatch):
    clock = itertools.count(T0, 1.0)
    monkeypatch.setattr("anechat.sessions.store.time.time", lambda: next(clock))
    with Store.open() as store:
        sid = store.create_session("smollm2-135m", "Réponds en français.", {"top_p": 0.9, "temperature": 0.2})
        store.add_user_message(sid, USER_TEXT)
        w = store.begin_answer(sid, "smollm2-135m", flush_interval=3600)
        w.append(CODE_ANSWER)
        w.finish({"tokens": 42, "tok_per_s": 31.25, "ttft_s": 0.125})
        store.add_user_message(sid, "Encore ?")
        w = store.begin_answer(sid, "smollm2-135m", flush_interval=3600)
        w.append("Je commen")
        w.finish(cut_short=True)
        yield store.session(sid), store.messages(sid)


EXPECTED_MD = f"""# Écris une fonction 🐍 — 日本語 and עברית, with a tab here

- Session: 1
- Model: smollm2-135m
- Created: 2026-09-21T14:13:20+00:00
- Updated: 2026-09-21T14:13:26+00:00
- Settings: temperature=0.2, top_p=0.9

## System prompt

Réponds en français.

## User

{USER_TEXT}

## Assistant (smollm2-135m)

{CODE_ANSWER}

_42 tokens · 31.2 tok/s · TTFT 0.12 s_

## User

Encore ?

## Assistant (smollm2-135m)

Je commen

_(answer cut short)_
"""


def test_markdown_export_is_exact(session):
    assert to_markdown(*session) == EXPECTED_MD


def test_json_export_is_lossless(session):
    text = to_json(*session)
    assert "🐍" in text and "\\u" not in text  # real UTF-8, not escapes
    data = json.loads(text)
    assert {k: v for k, v in data.items() if k != "messages"} == {
        "anechat_session": 1, "id": 1, "title": "Écris une fonction 🐍 — 日本語 and עברית, with a tab here",
        "model": "smollm2-135m", "system_prompt": "Réponds en français.",
        "settings": {"temperature": 0.2, "top_p": 0.9},
        "created_at": "2026-09-21T14:13:20+00:00", "updated_at": "2026-09-21T14:13:26+00:00",
    }
    assert [(m["role"], m["content"], m["model"], m["cut_short"]) for m in data["messages"]] == [
        ("user", USER_TEXT, None, False),
        ("assistant", CODE_ANSWER, "smollm2-135m", False),
        ("user", "Encore ?", None, False),
        ("assistant", "Je commen", "smollm2-135m", True),
    ]
    assert [m["id"] for m in data["messages"]] == [1, 2, 3, 4]
    answer = data["messages"][1]
    assert (answer["tokens"], answer["tok_per_s"], answer["ttft_s"]) == (42, 31.25, 0.125)
    assert answer["created_at"] == "2026-09-21T14:13:22+00:00"

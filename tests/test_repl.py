"""The prompt_toolkit REPL fed through a pipe input: answers, commands, errors, Ctrl+D."""

from __future__ import annotations

import io

import pytest
from fakes import REPLY, FakeModel, FakeProvider
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from anechat.engine.sampling import SamplingParams
from anechat.repl import Repl
from anechat.sessions.store import Store


async def run_repl(keys: str, *models, store=None, available=None, broken=(), model_ref=None, resume=None,
                   model_given=False):
    models = models or (FakeModel(),)
    out = io.StringIO()
    store = store or Store.memory()
    with create_pipe_input() as inp:
        repl = Repl(provider=FakeProvider(*models, available=available, broken=broken, default=models[0].name),
                    store=store, model_ref=model_ref, params=SamplingParams(), out=out, history=InMemoryHistory(),
                    pt_input=inp, pt_output=DummyOutput(), resume=resume, model_given=model_given)
        inp.send_text(keys)
        code = await repl.main()
    return code, out.getvalue(), repl


async def test_answers_with_a_stats_footer_and_saves_the_session():
    store = Store.memory()
    code, out, repl = await run_repl("hello\r\x04", store=store)
    assert code == 0
    assert REPLY in out
    assert "[42.0 tok/s · 5 tok · TTFT 125 ms · prefill 1234 tok/s]" in out
    sid = repl.conversation.session_id
    assert [m.content for m in store.messages(sid)] == ["hello", REPLY]


async def test_alt_enter_and_ctrl_j_add_lines():
    code, out, repl = await run_repl("one\x1b\rtwo\nthree\r\x04")
    assert repl.conversation.entries[0].content == "one\ntwo\nthree"


async def test_commands_and_their_errors_are_one_line_each():
    a, b = FakeModel("fake-a"), FakeModel("fake-b", reply="bee")
    keys = "q1\r/model fake-b\rq2\r/set temperature=0.3\r/set nonsense=1\r/frob\r/stats\r/models\r/help\r/think maybe\r\x04"
    code, out, repl = await run_repl(keys, a, b)
    assert [m["content"] for m in b.calls[-1]] == ["q1", REPLY, "q2"]
    assert "temperature = 0.3" in out
    assert "anechat: /set: unknown key 'nonsense'" in out
    assert "anechat: unknown command /frob" in out
    assert "decode 1 tok at 42.0 tok/s" in out
    assert "▶ fake-b" in out
    assert "/retry" in out and "/theme [NAME]" in out
    assert "anechat: usage: /think on|off" in out
    assert "Traceback" not in out


async def test_undo_puts_the_message_back_at_the_prompt():
    # After /undo the prompt holds "q1" again; Ctrl+U clears it so Ctrl+D can quit.
    code, out, repl = await run_repl("q1\r/undo\r\x15\x04")
    assert repl.conversation.entries == []
    assert "your message is back at the prompt" in out and "conversation is empty" not in out


async def test_model_failure_and_missing_model_do_not_end_the_repl():
    code, out, repl = await run_repl("go\r/model fake-b\rgo again\r\x04", FakeModel("fake-a", fail_after=2),
                                     FakeModel("fake-b", reply="fine"))
    assert "anechat: the model failed: RuntimeError: the fake model fell over" in out
    assert repl.conversation.entries[-1].content == "fine"
    code, out, repl = await run_repl("hello\r\x15\x04", FakeModel("fake-a"), broken=("bad",), model_ref="bad")
    assert "anechat: bad: chunk 1 is corrupt; /model NAME tries another" in out
    assert "no model loaded" in out


async def test_pull_then_switch_prints_progress():
    code, out, repl = await run_repl("/model fake-c\r\x04", available={"fake-c": FakeModel("fake-c")})
    assert "pulling fake-c (Fake fake-c, about 2 MB to download)" in out
    assert "  fake-c: converting" in out
    assert repl.conversation.model.name == "fake-c"


async def test_resume_continues_a_saved_session():
    store = Store.memory()
    sid = store.create_session("fake-a")
    store.add_user_message(sid, "earlier")
    store.add_message(sid, "assistant", "before", model="fake-a")
    model = FakeModel()
    code, out, repl = await run_repl("more\r\x04", model, store=store, resume=str(sid))
    assert f"resumed session {sid}" in out
    assert [m["content"] for m in model.calls[-1]] == ["earlier", "before", "more"]


async def test_resume_continues_on_the_sessions_own_model_or_says_why_not():
    store = Store.memory()
    sid = store.create_session("fake-b")
    store.add_user_message(sid, "earlier")
    a, b = FakeModel("fake-a"), FakeModel("fake-b")
    code, out, repl = await run_repl("more\r\x04", a, b, store=store, resume=str(sid))
    assert repl.conversation.model is b and [m["content"] for m in b.calls[-1]] == ["earlier", "more"]
    code, out, repl = await run_repl("\x04", a, b, store=store, resume=str(sid), model_ref="fake-a", model_given=True)
    assert repl.conversation.model is a
    assert f"session {sid} was held with fake-b; it continues with fake-a as asked" in out
    assert store.session(sid).model == "fake-a"  # it goes on with the model it continued with
    held_b = store.create_session("fake-b")
    other = store.create_session("gone-model")
    store.add_user_message(other, "x")
    code, out, repl = await run_repl(f"/resume {held_b}\r/resume {other}\r\x04", a, b, store=store)
    assert "fake-b on fake backend" in out  # /resume moved on to that session's model
    assert f"session {other} was held with gone-model, which is not installed or known here; it continues with fake-b" in out


@pytest.mark.parametrize("term,plain,tty,expected", [
    ("xterm-256color", False, True, False),
    ("dumb", False, True, True),
    ("", False, True, True),
    ("xterm", True, True, True),
    ("xterm", False, False, True),
])
def test_plain_mode_is_chosen_when_the_terminal_cannot_host_the_ui(monkeypatch, term, plain, tty, expected):
    import argparse
    import sys

    from anechat.commands.chat import wants_plain

    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    assert wants_plain(argparse.Namespace(plain=plain), {"TERM": term}) is expected


async def test_retry_and_undo_messages_read_right():
    # Issue 17: "1 message" (not "1 messages"); /undo on the last exchange says the message is back, not "empty".
    code, out, repl = await run_repl("q1\r/retry\r\x04")
    assert "1 message in this conversation" in out and "1 messages" not in out
    code, out, repl = await run_repl("/undo\r\x04")
    assert "nothing to undo" in out


def test_dumb_terminal_shows_the_restored_message_instead_of_hiding_it(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    repl = Repl(provider=FakeProvider(FakeModel()), store=Store.memory(), model_ref=None, params=SamplingParams(),
                out=io.StringIO(), history=InMemoryHistory())
    repl.history_changed(restore_input="my long\nquestion")
    assert repl._next_default == ""  # a dumb prompt would hold it unseen, and Enter would send it
    assert "your message was:\nmy long\nquestion" in repl.out.getvalue()


async def test_delete_asks_first_and_theme_names_the_one_in_use():
    store = Store.memory()
    code, out, repl = await run_repl("q1\r/delete\r/theme\r\x04", store=store)
    assert "/delete again confirms" in out and len(store.list_sessions()) == 1
    assert "theme: ane-dark ·" in out
    code, out, repl = await run_repl("q1\r/delete\r/delete\r\x04", store=store)
    assert "deleted session" in out


async def test_think_on_a_model_without_thinking_says_so():
    model = FakeModel()
    model.supports_thinking = False
    code, out, repl = await run_repl("/think on\r\x04", model)
    assert "fake-a has no thinking mode" in out


async def test_tab_on_a_dumb_terminal_shows_the_line_it_completes(monkeypatch):
    """prompt_toolkit's dumb prompt echoes only the character before the cursor after a change: a completion
    of "/mo" to "/model" showed "/mol" while the line held "/model"."""
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.output import create_output

    monkeypatch.setenv("TERM", "dumb")
    screen = io.StringIO()
    with create_pipe_input() as inp, create_app_session(input=inp, output=create_output(stdout=screen)):
        repl = Repl(provider=FakeProvider(FakeModel()), store=Store.memory(), model_ref=None, params=SamplingParams(),
                    out=io.StringIO(), history=InMemoryHistory())
        assert repl._dumb
        inp.send_text("/mo\t\r\x04")
        await repl.main()
    shown = screen.getvalue()
    assert "/model" in shown and "/mol" not in shown, shown
    assert "model: fake-a" in repl.out.getvalue()  # the line sent was "/model"

"""`anechat sessions ...` through the real dispatcher (anechat.cli.main) and, once, as a process."""

import json
import subprocess
import sys

import pytest

from anechat.cli import main
from anechat.sessions.store import Store


@pytest.fixture
def saved():
    with Store.open() as store:
        a = store.create_session("smollm2", "Be brief.")
        store.add_user_message(a, "How do I reverse a list in Python?")
        store.add_message(a, "assistant", "Use `items[::-1]`.\n```python\nprint([3, 2, 1])\n```", model="smollm2")
        b = store.create_session("qwen3")
        store.add_user_message(b, "Quelle est la capitale de la France ? \x1b[2J")
        w = store.begin_answer(b, "qwen3")
        w.append("Paris, c'est la capit")
        w.finish(cut_short=True)
    return a, b


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_table_and_json(saved, capsys):
    a, b = saved
    code, out, _ = run(capsys, "sessions", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "UPDATED", "MSGS", "MODEL", "TITLE"]
    assert lines[1].split()[0] == str(b) and lines[2].split()[0] == str(a)
    assert lines[2].endswith("How do I reverse a list in Python?")
    code, out, _ = run(capsys, "sessions", "list", "--json", "-n", "1")
    [row] = json.loads(out)
    assert (row["id"], row["model"], row["messages"]) == (b, "qwen3", 2)


def test_list_when_empty(capsys):
    code, out, err = run(capsys, "sessions", "list")
    assert (code, out) == (0, "") and "no saved sessions" in err


def test_show_prints_the_transcript(saved, capsys):
    a, b = saved
    code, out, _ = run(capsys, "sessions", "show", str(a))
    assert code == 0 and out.startswith("# How do I reverse a list in Python?\n")
    assert "## System prompt\n\nBe brief.\n" in out and "```python\nprint([3, 2, 1])\n```" in out
    code, out, _ = run(capsys, "sessions", "show", "last", "--json")
    assert json.loads(out)["messages"][1]["cut_short"] is True


def test_search_prints_hits_and_fails_without(saved, capsys):
    a, b = saved
    code, out, _ = run(capsys, "sessions", "search", "capitale", "France")
    assert code == 0 and out.split()[0] == str(b) and "capitale de la France" in out
    code, out, _ = run(capsys, "sessions", "search", "reverse a list", "--json")
    [hit] = json.loads(out)
    assert (hit["session_id"], hit["role"]) == (a, "user")
    code, out, err = run(capsys, "sessions", "search", "a list reverse")  # a phrase, in another order
    assert (code, out) == (1, "") and "no matches" in err
    code, _, err = run(capsys, "sessions", "search", "NOT", "x")
    assert code == 2 and err.startswith("anechat: search: cannot use")


def test_export_to_file_equals_stdout(saved, capsys, tmp_path):
    a, _ = saved
    for fmt in ("md", "json"):
        _, shown, _ = run(capsys, "sessions", "export", str(a), "--format", fmt)
        target = tmp_path / f"out.{fmt}"
        code, out, err = run(capsys, "sessions", "export", str(a), "--format", fmt, "-o", str(target))
        assert code == 0 and out == "" and str(target) in err
        assert target.read_text(encoding="utf-8") == shown
    code, _, err = run(capsys, "sessions", "export", str(a), "-o", str(tmp_path / "missing" / "x.md"))
    assert code == 1 and "cannot write" in err and "missing" in err
    assert not list((tmp_path).glob(".*tmp"))


def test_rm_asks_unless_yes(saved, capsys, monkeypatch):
    a, b = saved
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert run(capsys, "sessions", "rm", str(a))[0] == 1
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    code, _, err = run(capsys, "sessions", "rm", str(a))
    assert code == 0 and f"deleted session {a}" in err
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    code, _, err = run(capsys, "sessions", "rm", str(b))
    assert code == 2 and "--yes" in err
    assert run(capsys, "sessions", "rm", str(b), "--yes")[0] == 0
    with Store.open() as store:
        assert store.list_sessions() == []
    code, _, err = run(capsys, "sessions", "rm", str(b), "--yes")
    assert code == 1 and err == f"anechat: no session {b} (anechat sessions list shows them)\n"


def test_rename(saved, capsys):
    a, _ = saved
    assert run(capsys, "sessions", "rename", str(a), "  Lists   in Python ")[0] == 0
    with Store.open() as store:
        assert store.session(a).title == "Lists in Python"
    code, _, err = run(capsys, "sessions", "rename", str(a), "   ")
    assert code == 2 and "title is empty" in err
    code, _, err = run(capsys, "sessions", "rename", "nope", "x")
    assert code == 2 and "'nope' is not a session id" in err


def test_newer_database_is_one_clear_line(capsys):
    import sqlite3

    from anechat.paths import sessions_db

    sessions_db().parent.mkdir(parents=True)
    conn = sqlite3.connect(sessions_db())
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    code, out, err = run(capsys, "sessions", "list")
    assert code == 1 and out == "" and err.count("\n") == 1 and "upgrade anechat" in err


def test_on_a_terminal_stored_escapes_print_instead_of_acting(saved, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run(capsys, "sessions", "show", "last")
    assert "France ? ^[[2J" in out and "\x1b" not in out
    code, out, _ = run(capsys, "sessions", "search", "capitale")
    assert "\x1b[1mcapitale\x1b[0m" in out and "^[[2J" in out and "\ue000" not in out


def test_as_a_process_without_ui_imports(saved):
    # Piped stdout: stored text is data and goes out verbatim.
    code = ("import sys; from anechat.cli import main; rc = main(sys.argv[1:]); "
            "assert not {'textual', 'prompt_toolkit'} & set(sys.modules), 'UI import'; sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "sessions", "show", "last"], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert "Quelle est la capitale de la France ? \x1b[2J" in p.stdout.decode()
    p = subprocess.run([sys.executable, "-m", "anechat", "sessions", "show", "12345"], capture_output=True,
                       timeout=120)
    assert p.returncode == 1 and p.stderr.decode() == "anechat: no session 12345 (anechat sessions list shows them)\n"


def test_list_columns_sit_under_their_headers(saved, capsys):
    # Issue 17: with one-digit ids the header was a column off; a long model name pushed the titles right.
    with Store.open() as store:
        store.create_session("a-model-name-far-longer-than-the-column-is-wide", title="long one")
    code, out, _ = run(capsys, "sessions", "list")
    header, *rows = out.splitlines()
    for row in rows:
        for column in ("UPDATED", "MODEL", "TITLE"):  # left-aligned: the value starts where its header does
            at = header.index(column)
            assert row[at - 1] == " " and row[at] != " ", (column, row)
        for column in ("ID", "MSGS"):  # right-aligned: the value ends where its header does
            end = header.index(column) + len(column) - 1
            assert row[end] != " " and (end + 1 == len(row) or row[end + 1] == " "), (column, row)

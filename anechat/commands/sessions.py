"""`anechat sessions list|show|search|export|rm|rename`. Import-light: the store loads only when a command
runs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from anechat.errors import UsageError

if TYPE_CHECKING:
    from anechat.sessions.store import Store

SEARCH_HELP = ("all words must match; an argument with spaces is a phrase (quote it for the shell: "
               "\"the capital\"); word* matches prefixes; OR and NOT work between words")


def _count(text: str) -> int:
    """A --limit: a whole number a database can take."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**31) (got {value})")
    return value


def add_sessions_parser(subparsers) -> None:
    p = subparsers.add_parser("sessions", help="list, show, search, export, delete or rename saved chats",
                              description="Saved conversations (SQLite in anechat's data dir).")
    sub = p.add_subparsers(dest="sessions_command", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="most recently used sessions first")
    ls.add_argument("-n", "--limit", type=_count, default=50, help="how many (default 50, 0 = all)")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.set_defaults(func=run_list)

    show = sub.add_parser("show", help="print a session")
    show.add_argument("id", help="session id, or 'last'")
    show.add_argument("--json", action="store_true", help="print the JSON export")
    show.set_defaults(func=run_show)

    search = sub.add_parser("search", help="full-text search over all messages", description=SEARCH_HELP)
    search.add_argument("query", nargs="+", help=SEARCH_HELP)
    search.add_argument("-n", "--limit", type=_count, default=20, help="most hits to show (default 20)")
    search.add_argument("--json", action="store_true", help="print a JSON array")
    search.set_defaults(func=run_search)

    export = sub.add_parser("export", help="write a session as Markdown or JSON")
    export.add_argument("id", help="session id, or 'last'")
    export.add_argument("--format", choices=("md", "json"), default="md", help="default md")
    export.add_argument("-o", "--output", help="file to write (default stdout)")
    export.set_defaults(func=run_export)

    rm = sub.add_parser("rm", help="delete a session and its messages")
    rm.add_argument("id", help="session id, or 'last'")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask")
    rm.set_defaults(func=run_rm)

    rename = sub.add_parser("rename", help="set a session's title")
    rename.add_argument("id", help="session id, or 'last'")
    rename.add_argument("title")
    rename.set_defaults(func=run_rename)


def _store() -> Store:
    from anechat.sessions.store import Store

    return Store.open()


def _terminal_safe(text: str) -> str:
    """Stored text came from a model: on a terminal its escape sequences must print, not act."""
    if not sys.stdout.isatty():
        return text
    from anechat.textsafe import neutralize

    return neutralize(text)


def _local_time(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


MODEL_COLUMN = 28


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_list(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError("sessions list: --limit must be ≥ 0")
    with _store() as store:
        sessions = store.list_sessions(limit=args.limit or None)
    if args.json:
        from anechat.sessions.export import iso_utc

        rows = [{"id": s.id, "title": s.title, "model": s.model, "messages": s.message_count,
                 "created_at": iso_utc(s.created_at), "updated_at": iso_utc(s.updated_at)} for s in sessions]
        from anechat.textsafe import json_safe

        print(json_safe(json.dumps(rows, ensure_ascii=False, indent=2)))
        return 0
    if not sessions:
        print("no saved sessions yet", file=sys.stderr)
        return 0
    # Each column as wide as its header or its widest value, so the header sits over its column.
    width = max(2, *(len(str(s.id)) for s in sessions))
    models = [_cut(s.model or "-", MODEL_COLUMN) for s in sessions]
    model_w = max(5, *(len(m) for m in models))
    print(f"{'ID':>{width}}  {'UPDATED':16}  {'MSGS':>4}  {'MODEL':{model_w}}  TITLE")
    for s, model in zip(sessions, models):
        print(_terminal_safe(f"{s.id:>{width}}  {_local_time(s.updated_at):16}  {s.message_count:>4}  "
                             f"{model:{model_w}}  {s.title or ''}"))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from anechat.sessions.export import to_json, to_markdown

    with _store() as store:
        session = store.session(store.resolve(args.id))
        messages = store.messages(session.id)
    sys.stdout.write(_terminal_safe((to_json if args.json else to_markdown)(session, messages)))
    return 0


def _search_text(words: list[str]) -> str:
    # The shell has already eaten the user's quotes: an argument with spaces was meant as a phrase.
    return " ".join(f'"{w}"' if " " in w.strip() and '"' not in w else w for w in words)


# Private-use characters mark hits in snippets: they survive neutralize(), then become bold.
_HIT = ("\ue000", "\ue001")


def run_search(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("sessions search: --limit must be ≥ 1")
    bold = sys.stdout.isatty() and not args.json
    with _store() as store:
        hits = store.search(_search_text(args.query), limit=args.limit, marks=_HIT if bold else ("", ""))
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(h) for h in hits], ensure_ascii=False, indent=2))
        return 0
    if not hits:
        print("no matches", file=sys.stderr)
        return 1
    for h in hits:
        snippet = _terminal_safe(" ".join(h.snippet.split()))
        snippet = snippet.replace(_HIT[0], "\x1b[1m").replace(_HIT[1], "\x1b[0m")
        print(f"{h.session_id}  {_local_time(h.created_at)}  {h.role:9}  {snippet}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from anechat.sessions.export import EXPORTERS, write_file

    with _store() as store:
        session = store.session(store.resolve(args.id))
        text = EXPORTERS[args.format](session, store.messages(session.id))
    if args.output:
        write_file(Path(args.output), text)
        print(f"wrote session {session.id} to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(_terminal_safe(text))
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError("sessions rm: stdin is not a terminal, so I cannot ask; add --yes to delete")
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def run_rm(args: argparse.Namespace) -> int:
    with _store() as store:
        session = store.session(store.resolve(args.id))
        label = f"session {session.id} “{_terminal_safe(session.title or '')}” ({session.message_count} message{'' if session.message_count == 1 else 's'})"
        if not args.yes and not _confirm(f"Delete {label}? [y/N] "):
            print("not deleted", file=sys.stderr)
            return 1
        store.delete(session.id)
    print(f"deleted {label}", file=sys.stderr)
    return 0


def run_rename(args: argparse.Namespace) -> int:
    title = " ".join(args.title.split())
    if not title:
        raise UsageError("sessions rename: the title is empty")
    with _store() as store:
        session_id = store.resolve(args.id)
        store.rename(session_id, title)
    print(f"renamed session {session_id}", file=sys.stderr)
    return 0

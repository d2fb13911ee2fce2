"""Slash commands: one registry shared by the TUI and the REPL, with help and completion.

A handler gets the front end (a `ChatHost`) and the text after the command name; it reports through
`host.say` and raises AnechatError (shown as a one-line error) for bad arguments."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

from anechat.chat.present import stats_line
from anechat.errors import UsageError
from anechat.settings import SAMPLING_KEYS

if TYPE_CHECKING:
    from anechat.chat.conversation import Conversation
    from anechat.chat.model import Models


class ChatHost(Protocol):
    """What a front end offers the commands: its current conversation, its models, and a way to talk."""

    @property
    def conversation(self) -> Conversation: ...
    @property
    def provider(self) -> Models: ...

    def say(self, text: str) -> None: ...
    async def switch_model(self, name: str) -> None: ...
    async def pull_model(self, name: str) -> None: ...
    async def regenerate(self) -> None: ...
    async def follow_session_model(self) -> None: ...
    def new_conversation(self) -> None: ...
    def show_models(self) -> None: ...
    def show_sessions(self) -> None: ...
    def show_help(self) -> None: ...
    def theme_names(self) -> list[str]: ...
    def theme_in_use(self) -> str: ...
    def show_open_session(self, sid: int) -> bool: ...
    def set_theme(self, name: str) -> None: ...
    def history_changed(self, restore_input: str | None = None) -> None: ...
    def quit(self) -> None: ...


Handler = Callable[[ChatHost, str], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str
    handler: Handler
    args: Callable[[ChatHost], list[str]] | None = None  # completions for the argument
    aliases: tuple[str, ...] = ()
    idle: bool = False  # changes the history: refused while the conversation's answer streams


REGISTRY: dict[str, Command] = {}
_ALIASES: dict[str, str] = {}


def command(name: str, usage: str, help: str, args=None, aliases: tuple[str, ...] = (), idle: bool = False):
    def register(fn: Handler) -> Handler:
        REGISTRY[name] = Command(name, usage, help, fn, args, aliases, idle)
        for a in aliases:
            _ALIASES[a] = name
        return fn

    return register


def is_command(text: str) -> bool:
    # "//x" sends "/x" literally, so a message may start with a slash.
    return text.startswith("/") and not text.startswith("//")


def parse(text: str) -> tuple[Command, str]:
    head, _, arg = text.strip()[1:].partition(" ")
    name = head.lower()
    name = _ALIASES.get(name, name)
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f"; did you mean /{close[0]}?" if close else ""
        raise UsageError(f"unknown command /{head}{hint} (/help lists them)")
    return REGISTRY[name], arg.strip()


async def run(host: ChatHost, text: str, busy: bool = False) -> None:
    """`busy`: the conversation's answer is streaming (a front end that takes commands meanwhile says so)."""
    cmd, arg = parse(text)
    if busy and cmd.idle:
        raise UsageError(f"still answering — Esc stops it, then /{cmd.name}")
    await cmd.handler(host, arg)


def completions(host: ChatHost, text: str) -> list[str]:
    """Whole-line completions for what has been typed so far (the front ends show and insert them)."""
    if not text.startswith("/"):
        return []
    head, space, arg = text[1:].partition(" ")
    if not space:
        return [f"/{n}" for n in REGISTRY if n.startswith(head.lower())]
    cmd = REGISTRY.get(_ALIASES.get(head.lower(), head.lower()))
    if cmd is None or cmd.args is None:
        return []
    try:
        options = cmd.args(host)
    except Exception:  # noqa: BLE001 — completion must never break typing
        return []
    return [f"/{cmd.name} {o}" for o in options if o.startswith(arg)]


def help_rows() -> list[tuple[str, str]]:
    return [(c.usage, c.help) for c in REGISTRY.values()]


def help_text() -> str:
    width = max(len(u) for u, _ in help_rows())
    return "\n".join(f"{u:<{width}}  {h}" for u, h in help_rows())


# -- completers ---------------------------------------------------------------------------------------

def _model_names(host: ChatHost) -> list[str]:
    return [r.name for r in host.provider.rows()]


def _set_keys(host: ChatHost) -> list[str]:
    return [f"{k}=" for k in SAMPLING_KEYS]


# -- the commands ----------------------------------------------------------------------------------

@command("help", "/help [COMMAND]", "this list, or one command's help", args=lambda h: list(REGISTRY))
async def _help(host: ChatHost, arg: str) -> None:
    if arg:
        cmd, _ = parse("/" + arg.lstrip("/"))
        host.say(f"{cmd.usage} — {cmd.help}")
    else:
        host.show_help()


@command("model", "/model [NAME]", "switch model (history kept), or show the current one", args=_model_names)
async def _model(host: ChatHost, arg: str) -> None:
    conv = host.conversation
    if not arg:
        m = conv.model
        host.say(f"model: {m.name} on {m.backend_label}, context {m.context_length}" if m else "no model loaded yet")
        return
    await host.switch_model(arg)


@command("models", "/models", "installed and available models")
async def _models(host: ChatHost, arg: str) -> None:
    host.show_models()


@command("pull", "/pull NAME", "download (and convert) a model", args=_model_names)
async def _pull(host: ChatHost, arg: str) -> None:
    if not arg:
        raise UsageError("usage: /pull NAME (/models lists them)")
    await host.pull_model(arg)


@command("new", "/new", "a new conversation")
async def _new(host: ChatHost, arg: str) -> None:
    host.new_conversation()


@command("sessions", "/sessions", "saved conversations")
async def _sessions(host: ChatHost, arg: str) -> None:
    host.show_sessions()


@command("resume", "/resume ID", "continue a saved conversation ('last' for the latest)", idle=True)
async def _resume(host: ChatHost, arg: str) -> None:
    if not arg:
        raise UsageError("usage: /resume ID (/sessions lists them)")
    if host.show_open_session(host.conversation.store.resolve(arg)):
        return  # open in another tab already: that tab is shown instead of a second writer
    sid = host.conversation.resume(arg)
    host.history_changed()
    host.say(f"resumed session {sid}: {host.conversation.title}")
    await host.follow_session_model()


@command("rename", "/rename TITLE", "rename this conversation")
async def _rename(host: ChatHost, arg: str) -> None:
    host.conversation.rename(arg)
    host.history_changed()
    host.say(f"renamed to {host.conversation.title}")


CONFIRM_S = 30.0
_armed: dict[int, float] = {}  # id(conversation) -> when /delete was first asked


@command("delete", "/delete", "delete this conversation from the saved sessions (asks to confirm)", idle=True)
async def _delete(host: ChatHost, arg: str) -> None:
    import time

    conv = host.conversation
    asked = _armed.pop(id(conv), None)
    if conv.session_id is not None and arg.lower() not in ("yes", "y") and (asked is None or time.monotonic() - asked > CONFIRM_S):
        _armed[id(conv)] = time.monotonic()
        n = len(conv.entries)
        host.say(f"delete session {conv.session_id} ({conv.title}, {n} message{'s' if n != 1 else ''}) for good? "
                 "/delete again confirms")
        return
    sid = conv.delete()
    host.history_changed()
    host.say(f"deleted session {sid}" if sid is not None else "nothing saved yet; cleared")


@command("export", "/export md|json [PATH]", "write this conversation to a file", args=lambda h: ["md", "json"])
async def _export(host: ChatHost, arg: str) -> None:
    fmt, _, path = arg.partition(" ")
    if not fmt:
        raise UsageError("usage: /export md|json [PATH]")
    host.say(f"exported to {host.conversation.export(fmt, path.strip() or None)}")


@command("system", "/system [TEXT|clear]", "set, show or clear the system prompt")
async def _system(host: ChatHost, arg: str) -> None:
    conv = host.conversation
    if not arg:
        host.say(f"system prompt: {conv.system}" if conv.system else "no system prompt")
        return
    conv.set_system(None if arg == "clear" else arg)
    host.say("system prompt cleared" if conv.system is None else "system prompt set")


@command("set", "/set KEY=VALUE", "sampling: " + ", ".join(SAMPLING_KEYS), args=_set_keys)
async def _set(host: ChatHost, arg: str) -> None:
    conv = host.conversation
    if not arg:
        p = conv.params
        host.say(" ".join(f"{k}={getattr(p, k)}" for k in SAMPLING_KEYS))
        return
    key, eq, value = arg.partition("=")
    if not eq:
        key, _, value = arg.partition(" ")
    key, value = key.strip(), value.strip()
    if not value:
        raise UsageError("usage: /set KEY=VALUE, e.g. /set temperature=0.2")
    conv.set_param(key, value)
    host.say(f"{key} = {getattr(conv.params, key)}")


@command("retry", "/retry", "answer the last message again", idle=True)
async def _retry(host: ChatHost, arg: str) -> None:
    if not host.conversation.drop_answer():
        raise UsageError("nothing to retry yet")
    host.history_changed()
    await host.regenerate()


@command("undo", "/undo", "remove the last exchange (your message returns to the input)", idle=True)
async def _undo(host: ChatHost, arg: str) -> None:
    text = host.conversation.undo()
    if text is None:
        raise UsageError("nothing to undo")
    host.history_changed(restore_input=text)


@command("clear", "/clear", "start this conversation afresh (the old one stays saved)", idle=True)
async def _clear(host: ChatHost, arg: str) -> None:
    host.conversation.clear()
    host.history_changed()


@command("think", "/think on|off", "thinking mode for models that have it (Qwen3)", args=lambda h: ["on", "off"])
async def _think(host: ChatHost, arg: str) -> None:
    values = {"on": True, "off": False}
    if arg.lower() not in values:
        raise UsageError("usage: /think on|off")
    conv = host.conversation
    conv.think = values[arg.lower()]
    model = conv.model
    if conv.think and model is not None and not getattr(model, "supports_thinking", True):
        host.say(f"thinking on — but {model.name} has no thinking mode, so its answers stay as they are "
                 "(the setting applies to a model that has one)")
        return
    host.say(f"thinking {arg.lower()}")


@command("stats", "/stats", "statistics of the last answer")
async def _stats(host: ChatHost, arg: str) -> None:
    conv = host.conversation
    if conv.last_stats is None:
        host.say("no answer yet")
        return
    host.say(stats_line(conv.last_stats, conv.last_finish or "-"))


@command("theme", "/theme [NAME]", "switch the colour theme (saved), or list them", args=lambda h: h.theme_names())
async def _theme(host: ChatHost, arg: str) -> None:
    names = host.theme_names()
    if not arg:
        current = host.theme_in_use()
        host.say(f"theme: {current} · available: " + ", ".join(names))
        return
    if arg not in names:
        close = difflib.get_close_matches(arg, names, n=1)
        raise UsageError(f"unknown theme {arg!r}" + (f"; did you mean {close[0]}?" if close else f" (themes: {', '.join(names)})"))
    host.set_theme(arg)
    host.say(f"theme {arg}")


@command("quit", "/quit", "leave anechat", aliases=("exit", "q"))
async def _quit(host: ChatHost, arg: str) -> None:
    host.quit()

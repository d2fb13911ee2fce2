"""`anechat --plain` (and terminals that cannot host the full-screen UI): a prompt_toolkit line chat.

Same conversations, sessions and slash commands as the TUI. Enter sends, Alt+Enter or Ctrl+J adds a
line, pasted text keeps its newlines; Ctrl+C stops an answer (or clears the line), Ctrl+D quits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from dataclasses import replace

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings

from anechat.chat import slash
from anechat.chat.conversation import Conversation
from anechat.chat.present import footer
from anechat.engine.generate import DoneEvent, TokenEvent
from anechat.errors import AnechatError, UsageError
from anechat.signals import Terminated
from anechat.textsafe import neutralize


class SlashCompleter(Completer):
    def __init__(self, host: Repl) -> None:
        self.host = host

    def get_completions(self, document, complete_event):
        text = document.text_before_cursor
        for option in slash.completions(self.host, text):
            yield Completion(option, start_position=-len(text))


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _key_bindings(host: Repl | None = None) -> KeyBindings:
    kb = KeyBindings()

    if host is not None:
        @kb.add("tab", eager=True)
        def _complete(event) -> None:
            """A dumb terminal's prompt echoes only the character before the cursor after each change, so a
            completion that replaced "/mo" by "/model" showed "/mol". Here, as a shell does, Tab extends the
            line by the completions' common prefix one character at a time, each one echoed."""
            import os.path

            buf = event.current_buffer
            text = buf.document.text_before_cursor
            common = os.path.commonprefix(list(slash.completions(host, text)))
            for ch in common[len(text):] if common.startswith(text) else "":
                buf.insert_text(ch)

    @kb.add("enter")
    def _send(event) -> None:
        event.current_buffer.validate_and_handle()

    @kb.add("escape", "enter")
    @kb.add("c-j")
    def _newline(event) -> None:
        event.current_buffer.insert_text("\n")

    return kb


class Repl:
    def __init__(self, *, provider, store, model_ref, params, system=None, think=None, resume=None,
                 out=None, history=None, pt_input=None, pt_output=None, chosen: dict | None = None,
                 model_given: bool = False) -> None:
        self.provider, self.store = provider, store
        self.model_ref, self.params, self.system, self.think = model_ref, params, system, think
        self.out = out or sys.stdout
        self.clean = neutralize if self.out.isatty() else (lambda s: s)
        self.conversation = Conversation(store, model_ref=model_ref, params=replace(params), system=system, think=think,
                                         chosen=None if chosen is None else dict(chosen))
        self.resume_ref = resume
        self.model_given = model_given  # named on the command line: it wins over a resumed session's model
        self._done = False
        self._next_default = ""
        self._answering: threading.Event | None = None  # the cancel flag of the answer being written
        self._terminating = False
        from prompt_toolkit.utils import is_dumb_terminal

        # prompt_toolkit's own test: then it reads a plain line and shows no pre-filled text.
        self._dumb = pt_output is None and is_dumb_terminal()
        self.session: PromptSession[str] = PromptSession(
            history=history if history is not None else self._history(),
            completer=SlashCompleter(self), complete_while_typing=not self._dumb, multiline=True,
            key_bindings=_key_bindings(self if self._dumb else None), input=pt_input, output=pt_output,
            prompt_continuation=lambda width, line, soft: "… ".rjust(width),
        )

    @staticmethod
    def _history():
        from anechat.paths import history_file

        path = history_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            return FileHistory(str(path))
        except OSError:
            return InMemoryHistory()  # a read-only data dir costs the history, not the chat

    # -- output ------------------------------------------------------------------------------------------

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def say(self, text: str) -> None:
        self.write(self.clean(text) + "\n")

    def error(self, text: str) -> None:
        self.write(f"anechat: {self.clean(text)}\n")

    # -- the loop -------------------------------------------------------------------------------------------

    def _on_sigterm(self) -> None:
        """SIGTERM ends the REPL as Ctrl+C ends pipe mode: an answer being written stops and is saved as
        stopped, then the process leaves (exit 143). At the prompt or while a model loads, it leaves at once
        (prompt_toolkit puts the terminal back as its task is cancelled)."""
        if self._answering is None:
            raise Terminated()
        self._terminating = True
        self._answering.set()

    async def main(self) -> int:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)
        if self.resume_ref:
            sid = self.conversation.resume(self.resume_ref)
            self.say(f"resumed session {sid}: {self.conversation.title} ({_n(len(self.conversation.entries), 'message')})")
        try:
            name = self.model_ref or self.provider.default_name()
            if self.conversation.session_id is not None:
                name = await self._session_model(name) or name
            if name is None:
                raise UsageError("no model given and no default model; /models lists them")
            await self._use(name)
        except AnechatError as e:
            self.error(f"{e}; /model NAME tries another")
        self.say("/help lists commands · Enter sends · Alt+Enter or Ctrl+J adds a line · Ctrl+C stops · Ctrl+D quits")
        while not self._done:
            try:
                text = await self.session.prompt_async("› ", default=self._next_default)
            except KeyboardInterrupt:
                self._next_default = ""
                continue
            except EOFError:
                break
            self._next_default = ""
            await self.handle(text)
        return 0

    async def handle(self, text: str) -> None:
        stripped = text.strip()
        if not stripped:
            return
        try:
            if slash.is_command(stripped):
                await slash.run(self, stripped)
                return
            if stripped.startswith("//"):
                text = text.lstrip()[1:]
            if self.conversation.model is None:
                raise UsageError("no model loaded; /model NAME picks one")
            self.conversation.add_user(text)
            await self.stream()
        except AnechatError as e:
            self.error(str(e))

    async def stream(self) -> None:
        from anechat.engine.context import PromptTooLong

        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, cancel.set)
            handler = True
        except (NotImplementedError, RuntimeError, ValueError):
            handler = False  # not the main thread (tests) or no signals here
        done: DoneEvent | None = None
        wrote = ""
        self._answering = cancel
        try:
            async for event in self.conversation.answer(cancel):
                if isinstance(event, TokenEvent):
                    wrote += event.text
                    self.write(self.clean(event.text))
                elif isinstance(event, DoneEvent):
                    done = event
        except PromptTooLong as e:
            text = self.conversation.undo()
            self._next_default = text or ""
            raise UsageError(f"{e} (your message is back at the prompt)") from None
        except AnechatError:
            raise
        except Exception as e:  # noqa: BLE001 — the REPL outlives a model that fails mid-answer
            raise AnechatError(f"the model failed: {type(e).__name__}: {e}") from None
        finally:
            self._answering = None
            if handler:
                loop.remove_signal_handler(signal.SIGINT)
            if wrote and not wrote.endswith("\n"):
                self.write("\n")
        if self._terminating:
            raise Terminated()
        if done is not None:
            self.say(footer(done.stats, done.finish_reason))

    # -- ChatHost --------------------------------------------------------------------------------------------

    async def _use(self, name: str):
        what = await asyncio.to_thread(self.provider.pull_needed, name)
        if what is not None:
            self.say(f"pulling {name} ({what})")
            await asyncio.to_thread(self.provider.pull, name, lambda line: self.say(f"  {line}"))
        self.say(f"loading {name}…")
        model = await asyncio.to_thread(self.provider.load, name)
        self.conversation.use_model(model)
        self.say(f"{model.name} on {model.backend_label}, context {model.context_length}")
        return model

    async def switch_model(self, name: str) -> None:
        await self._use(name)
        if self.conversation.entries:
            n = len(self.conversation.entries)
            self.say(f"the {n} earlier message{'s are' if n != 1 else ' is'} kept")

    async def pull_model(self, name: str) -> None:
        what = await asyncio.to_thread(self.provider.pull_needed, name)
        if what is None:
            self.say(f"{name} is already installed")
            return
        self.say(f"pulling {name} ({what})")
        await asyncio.to_thread(self.provider.pull, name, lambda line: self.say(f"  {line}"))
        self.say(f"{name} installed")

    async def _session_model(self, current: str | None) -> str | None:
        """The resumed session's own model when it is here (else None, and the reason said)."""
        from anechat.chat.model import session_model

        conv = self.conversation
        sid = conv.session_id
        assert sid is not None
        held = self.store.session(sid).model
        own, note = await asyncio.to_thread(session_model, self.provider, sid, held, current, self.model_given)
        if note:
            self.say(note)
        return own

    async def follow_session_model(self) -> None:
        own = await self._session_model(self.conversation.model_name)
        if own is not None:
            await self._use(own)

    async def regenerate(self) -> None:
        await self.stream()

    def new_conversation(self) -> None:
        old = self.conversation
        self.conversation = Conversation(self.store, model_ref=old.model_ref, params=replace(old.params),
                                         system=old.system, think=old.think,
                                         chosen=None if old.chosen is None else dict(old.chosen))
        if old.model is not None:
            self.conversation.use_model(old.model)
        self.say("new conversation")

    def show_models(self) -> None:
        from anechat.models.catalog import ModelRow

        current = self.conversation.model_name
        self.say(ModelRow.header(name_width=34))
        for r in self.provider.rows():
            self.say(r.line(current, name_width=34))

    def show_sessions(self) -> None:
        sessions = self.store.list_sessions(limit=20)
        if not sessions:
            self.say("no saved sessions yet")
        for s in sessions:
            self.say(f"{s.id:>5}  {s.message_count:>4} msgs  {s.title or 'untitled'}")

    def show_help(self) -> None:
        self.say(slash.help_text())

    def theme_in_use(self) -> str:
        from anechat.config import Settings
        from anechat.settings import SCHEMA

        try:
            return Settings.load().theme or SCHEMA["theme"].default
        except AnechatError:
            return SCHEMA["theme"].default

    def show_open_session(self, sid: int) -> bool:
        return False  # one conversation at a time here

    def theme_names(self) -> list[str]:
        from anechat.themes import load_themes

        return sorted(load_themes(warn=lambda _: None))

    def set_theme(self, name: str) -> None:
        from anechat.config import save_setting

        save_setting("theme", name)
        self.say("(themes colour the full-screen UI; this choice is saved for it)")

    def history_changed(self, restore_input: str | None = None) -> None:
        n = len(self.conversation.entries)
        left = f"{n} message{'s' if n != 1 else ''} in this conversation" if n else "no messages left in this conversation"
        if restore_input is None:
            self.say(left)
        elif self._dumb:
            # A dumb terminal's prompt does not show a pre-filled line: Enter would send it unseen.
            self.say(f"removed the last exchange ({left}); your message was:\n{restore_input}")
        else:
            self._next_default = restore_input
            self.say(f"removed the last exchange ({left}); your message is back at the prompt")

    def quit(self) -> None:
        self._done = True


def run_repl(**kwargs) -> int:
    repl = Repl(**kwargs)
    return asyncio.run(repl.main())

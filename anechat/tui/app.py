"""`anechat` on a terminal: conversations in tabs, streaming Markdown answers, a live tokens/sec gauge.

The app implements `ChatHost`, so slash commands are the same as in the REPL. Model calls run in the
engine's worker thread; this event loop only renders, and only a few times a second (a pacer batches
tokens into redraws, each laid out in one pass; the gauge ticks on a timer), so decoding is not slowed
by repaints."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from dataclasses import replace

from textual import on, work
from textual.app import App, ScreenStackError
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Label, ListItem, ListView, TabbedContent

from anechat.chat import slash
from anechat.chat.conversation import Conversation
from anechat.engine.generate import DoneEvent
from anechat.errors import AnechatError, UsageError
from anechat.runtime.threads import set_ui_shares_cores
from anechat.signals import EXIT_TERMINATED
from anechat.tui.pacer import RenderPacer
from anechat.tui.pane import ConversationPane, tab_width
from anechat.tui.screens import HelpScreen, ModelsScreen, PullScreen
from anechat.tui.widgets import ChatInput, MessageView, Note, StatusBar, last_code_block, shown_text

QUIT_WINDOW_S = 2.0
NARROW = 70


class AnechatApp(App):
    TITLE = "anechat"
    CSS_PATH = "app.tcss"
    AUTO_FOCUS = "#input"  # focused as the screen mounts: keys typed while anechat starts go into the input
    BINDINGS = [
        Binding("ctrl+c", "interrupt", "stop / quit", priority=True, show=False),
        Binding("escape", "stop", "stop answer", show=False),
        Binding("ctrl+n", "new_tab", "new chat", show=False),
        # The input handles Ctrl+N, Ctrl+W and Esc itself, in key order (ChatInput.APP_KEYS); these are for
        # when something else has the focus.
        Binding("ctrl+w", "close_tab", "close chat", show=False),
        Binding("ctrl+b", "toggle_sidebar", "sessions", show=False),
        Binding("ctrl+y", "copy_answer", "copy answer", show=False, priority=True),
        Binding("ctrl+g", "copy_code", "copy code", show=False, priority=True),
        Binding("f1", "help", "help", show=False),
    ]

    def __init__(self, *, provider, store, model_ref: str | None, params, system: str | None = None,
                 think: bool | None = None, resume: str | None = None, theme: str | None = None,
                 warnings: list[str] | None = None, tick_s: float = 0.5, render_s: float = 0.25,
                 render_slowest_s: float = 2.0, chosen: dict | None = None, model_given: bool = False) -> None:
        super().__init__()
        from anechat.tui.textual_adapter import report_alt_enter

        report_alt_enter()
        self.chosen = chosen  # the sampling the user set (Conversation.chosen); the model's defaults go below
        self.provider, self.store = provider, store
        self.model_ref, self.params, self.system, self.think = model_ref, params, system, think
        self.resume_ref = resume
        self.model_given = model_given  # named on the command line: it wins over a resumed session's model
        self.tick_s, self.render_s, self.render_slowest_s = tick_s, render_s, render_slowest_s
        self._pane_seq = 0
        # The tab whose draft the input holds; None: the tab being opened (keys typed after Ctrl+N are its).
        self._draft_owner: ConversationPane | None = None
        self._last_ctrl_c = 0.0
        self._theme_choice = theme
        self._startup_warnings = list(warnings or [])
        self._register_themes()

    # -- setup ------------------------------------------------------------------------------------------

    def _register_themes(self) -> None:
        from anechat.themes import DEFAULT_THEME, load_themes
        from anechat.tui.themes import to_textual

        self._theme_warnings: list[str] = []
        self.anechat_themes = load_themes(warn=self._theme_warnings.append)
        for spec in self.anechat_themes.values():
            self.register_theme(to_textual(spec))
        wanted = self._theme_choice or DEFAULT_THEME
        if wanted not in self.anechat_themes:
            self._theme_warnings.append(f"theme {wanted!r} not found; using {DEFAULT_THEME}")
            wanted = DEFAULT_THEME
        if wanted in self.anechat_themes:
            self.theme = wanted

    def compose(self):
        with Horizontal(id="main"):
            with Vertical(id="sidebar"):
                yield Label("Sessions", classes="sidebar-title")
                yield ListView(id="sessions")
            with Vertical(id="chat"):
                yield TabbedContent(id="tabs")
                yield Label("", id="completions", markup=False)
                yield ChatInput(id="input", placeholder="Message  (Enter sends · Alt+Enter or Ctrl+J new line · /help · F1 keys)")
        # Outside #main: Textual repaints every widget whose container overlaps a changed line, and the
        # gauge changes twice a second; in #chat each change would also repaint the input and the tabs.
        yield StatusBar(id="status")

    async def on_mount(self) -> None:
        # this thread redraws while the model computes: the runtime's thread policy keeps a core for it
        set_ui_shares_cores(True)
        if not self.is_headless:  # (a test's app shares its process with the test runner)
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)
        box = self.query_one(ChatInput)
        box.completer = lambda text: slash.completions(self, text)
        box.submitter = self.submit
        box.focus()  # first: keys typed while the first tab is set up go into the input, not nowhere
        for w in self._startup_warnings + self._theme_warnings:
            self.notify(w, severity="warning")
        conv = self._new_conversation()
        if self.resume_ref:
            try:
                conv.resume(self.resume_ref)
            except AnechatError as e:
                self.notify(str(e), severity="error")
        await self._add_pane(conv)
        self.set_interval(self.tick_s, self._tick)
        self._apply_width(self.size.width)
        self.refresh_sessions()
        self.query_one(ChatInput).focus()
        self.load_model(self.model_ref, conv, resumed=conv.session_id is not None)

    def on_unmount(self) -> None:
        set_ui_shares_cores(False)

    def _new_conversation(self) -> Conversation:
        current = self._current_pane_or_none()
        model = current.conversation.model if current else None
        conv = Conversation(self.store, model_ref=self.model_ref, params=replace(self.params), system=self.system,
                            think=self.think, chosen=None if self.chosen is None else dict(self.chosen))
        if model is not None:
            conv.use_model(model)
        return conv

    async def _add_pane(self, conv: Conversation) -> ConversationPane:
        self._pane_seq += 1
        pacer = RenderPacer(fastest_s=self.render_s, slowest_s=max(self.render_s, self.render_slowest_s))
        pane_id = f"chat-{self._pane_seq}"
        pane = ConversationPane(conv, pane_id, pacer, tab_width(self.size.width))
        tabs = self.query_one(TabbedContent)
        await tabs.add_pane(pane)
        tabs.active = pane_id
        await pane.rebuild()
        self._update_status()
        return pane

    # -- the current conversation -------------------------------------------------------------------

    def _current_pane_or_none(self) -> ConversationPane | None:
        try:
            pane = self.query_one(TabbedContent).active_pane
        except NoMatches:  # before compose, or the active tab's pane is being removed (tab closed, app exits)
            return None
        return pane if isinstance(pane, ConversationPane) else None

    @property
    def pane(self) -> ConversationPane:
        pane = self._current_pane_or_none()
        assert pane is not None
        return pane

    @property
    def conversation(self) -> Conversation:
        return self.pane.conversation

    # -- sending --------------------------------------------------------------------------------------

    @on(ChatInput.CompletionsChanged)
    def _completions(self, event: ChatInput.CompletionsChanged) -> None:
        try:
            label = self.screen.query_one("#completions", Label)
        except (NoMatches, ScreenStackError):  # a modal screen is on top, or the app is closing
            return
        shown = event.options[:12]
        label.update("  ".join(shown) + ("  …" if len(event.options) > len(shown) else "") + ("   (Tab completes)" if shown else ""))
        label.set_class(bool(shown), "shown")

    async def submit(self, text: str) -> None:
        if slash.is_command(text.strip()):
            self.run_command(text.strip())
            return
        if text.startswith("//"):
            text = text[1:]
        pane = self.pane
        if pane.busy:
            self._restore_input(text)
            self.notify("still answering — Esc stops it", severity="warning")
            return
        if pane.conversation.model is None:
            self._restore_input(text)
            self.notify("the model is not loaded yet; /model NAME picks one", severity="warning")
            return
        entry = pane.conversation.add_user(text)
        await pane.log_view.shelve()  # before the new message makes Textual lay out the whole conversation
        await pane.log_view.mount(MessageView("user", entry.content))
        pane.log_view.following = True
        pane.log_view.follow()
        self._retitle(pane)
        self.answer(pane)

    @work(group="commands", exclusive=False, exit_on_error=False)
    async def run_command(self, text: str) -> None:
        pane = self._current_pane_or_none()
        try:
            await slash.run(self, text, busy=pane is not None and pane.busy)
        except AnechatError as e:
            self.error(str(e))
        self.refresh_sessions()

    @work(group="commands", exclusive=False, exit_on_error=False)
    async def _follow_session_model(self) -> None:
        await self.follow_session_model()

    def answer(self, pane: ConversationPane) -> None:
        # Busy from this moment, not from when the worker first runs: a /retry or a message that arrives in
        # between would start a second answer beside it.
        pane.cancel = threading.Event()
        pane.asked_at, pane.first_token_s = time.monotonic(), None
        pane.meter.start()
        self._answer(pane)

    @work(exclusive=False, exit_on_error=False)
    async def _answer(self, pane: ConversationPane) -> None:
        from anechat.engine.context import PromptTooLong
        from anechat.engine.generate import TokenEvent

        assert pane.cancel is not None  # set by answer()
        conv = pane.conversation
        view = MessageView("assistant", "")
        await pane.log_view.mount(view)
        await pane.log_view.shelve(keep=view)
        self._update_status()
        done: DoneEvent | None = None
        pending: list[str] = []
        pacer = pane.pacer
        pacer.budget = self._budget(conv.model)
        pacer.start()
        try:
            # Tokens in batches no more often than the fastest redraw (or the gauge's tick): each batch
            # wakes this loop, and wake-ups cost the decoding thread more than their CPU time.
            async for event in conv.answer(pane.cancel, coalesce_s=min(self.render_s, self.tick_s)):
                if isinstance(event, TokenEvent):
                    pending.append(event.text)
                    if pane.first_token_s is None:
                        # The engine's figure, which the answer's final stats repeat; else (a model that does
                        # not give one) as seen from here.
                        pane.first_token_s = event.ttft_s if event.ttft_s is not None else time.monotonic() - pane.asked_at
                    pane.meter.add(at=event.at)
                    # Re-rendering Markdown is the UI's dearest work: at most a few times a second, and
                    # less when a full screen makes each redraw expensive (the pacer's budget).
                    if pacer.due():
                        await self._flush_text(pane, view, pending)
                        pacer.drawn()
                elif isinstance(event, DoneEvent):
                    done = event
        except PromptTooLong as e:
            text = conv.undo()
            await pane.rebuild()
            if text is not None:
                self._restore_input(text, pane)
            self.error(f"{e} (your message is back in the input)", pane)
        except AnechatError as e:
            self.error(str(e), pane)
        except Exception as e:  # noqa: BLE001 — a model failing mid-answer must not take the app down
            self.error(f"the model failed: {type(e).__name__}: {e}", pane)
        finally:
            await self._flush_text(pane, view, pending)
            pane.cancel = None
            cut = done is None or done.finish_reason == "cancelled"
            if view.is_attached and not view.text and cut:
                await view.remove()
            else:
                view.set_cut_short(cut)
            if done is not None:
                pane.meter.samples.append(done.stats.decode_tok_s)
                if done.stats.dropped_messages:
                    self.notify(f"{done.stats.dropped_messages} older messages did not fit the context and were left out")
                if done.stats.context_shifts:
                    self.notify("the answer reached the end of the context; anechat kept the recent part and went on")
            self._update_status(final=done)
            pane.log_view.unshelve()
            pane.log_view.follow()
            self.refresh_sessions()

    @staticmethod
    def _budget(model) -> float:
        # A model on the ANE leaves the cores to the UI; one on the CPU loses what each frame takes.
        return 0.025 if getattr(model, "shares_cores", True) else 0.10

    async def _flush_text(self, pane: ConversationPane, view: MessageView, pending: list[str]) -> None:
        if not pending:
            return
        text = "".join(pending)
        pending.clear()
        view.text += text
        # In one batch, so that the screen is laid out once per redraw: Markdown.append parses the text
        # and mounts the new blocks in two steps, and left alone Textual lays out after each.
        with self.batch_update():
            await view.append(text)
            pane.log_view.follow()
            await pane.log_view.shelve(keep=view)

    async def regenerate(self) -> None:
        pane = self.pane
        if pane.busy:
            raise UsageError("still answering — Esc stops it")
        await pane.rebuilt()  # the old answer gone from the screen (/retry asked for that rebuild already)
        self.answer(pane)

    # -- keys -------------------------------------------------------------------------------------------

    def _on_sigterm(self) -> None:
        """SIGTERM: the answers being written stop and are saved as stopped, as with Esc, then the app
        closes the way /quit does (the terminal is put back), and the command exits 143."""
        for pane in self.query(ConversationPane):
            if pane.cancel is not None:
                pane.cancel.set()
        self._leaving = asyncio.get_running_loop().create_task(self._leave_when_stopped())

    async def _leave_when_stopped(self) -> None:
        end = time.monotonic() + 1.0  # an answer stops within a token or a prefill block
        while time.monotonic() < end and any(p.busy for p in self.query(ConversationPane)):
            await asyncio.sleep(0.02)
        self.exit(return_code=EXIT_TERMINATED)

    def action_stop(self) -> None:
        pane = self._current_pane_or_none()
        if pane is not None and pane.cancel is not None:
            pane.cancel.set()
            self.notify("stopped")

    def action_interrupt(self) -> None:
        pane = self._current_pane_or_none()
        if pane is not None and pane.busy:
            self.action_stop()
            return
        if self.query_one(ChatInput).text.strip():
            # Twice in a row quits an idle app, and a draft would go with it.
            self.notify("your draft is still in the input: send it, clear it, or /quit", severity="warning")
            return
        now = time.monotonic()
        if now - self._last_ctrl_c < QUIT_WINDOW_S:
            self.exit()
            return
        self._last_ctrl_c = now
        self.notify("press Ctrl+C again to quit", timeout=QUIT_WINDOW_S)

    async def action_new_tab(self) -> None:
        # Awaited (from the input's key handler): the keys typed after Ctrl+N go to the new tab.
        self._hand_input_to_new_tab()
        await self._add_pane(self._new_conversation())

    async def action_close_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        if tabs.tab_count <= 1:
            self.notify("this is the last conversation (/quit leaves)", severity="warning")
            return
        pane = self.pane
        if pane.cancel is not None:
            pane.cancel.set()
        await tabs.remove_pane(pane.pane_id)
        self.query_one(ChatInput).focus()  # else focus is nowhere, and typing needs many Tabs first
        self._update_status()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        if sidebar.has_class("shown"):
            sidebar.remove_class("shown")
            self.query_one(ChatInput).focus()
        else:
            self.show_sessions()

    def _copy(self, text: str | None, what: str) -> None:
        if not text:
            self.notify(f"no {what} to copy", severity="warning")
            return
        self.copy_to_clipboard(text)
        self.notify(f"{what} copied")

    def _last_answer(self) -> str | None:
        return next((e.content for e in reversed(self.conversation.entries) if e.role == "assistant"), None)

    def action_copy_answer(self) -> None:
        self._copy(self._last_answer(), "answer")

    def action_copy_code(self) -> None:
        self._copy(last_code_block(self._last_answer() or ""), "code block")

    def action_help(self) -> None:
        self.show_help()

    # -- ChatHost -------------------------------------------------------------------------------------

    def say(self, text: str, pane: ConversationPane | None = None, error: bool = False) -> None:
        pane = pane or self._current_pane_or_none()
        if pane is None:
            self.notify(text, severity="error" if error else "information")
            return
        pane.log_view.mount(Note(text, error=error))
        pane.log_view.call_after_refresh(pane.log_view.follow)

    def error(self, text: str, pane: ConversationPane | None = None) -> None:
        """An error stays in the conversation where it happened (a toast alone is gone before it is read)."""
        self.say(text, pane, error=True)
        self.notify(text, severity="error", timeout=10)

    def show_help(self) -> None:
        self.push_screen(HelpScreen())

    def show_models(self) -> None:
        current = self.conversation.model_name

        def chosen(name: str | None) -> None:
            if name and name != current:
                self.run_command(f"/model {name}")

        self.push_screen(ModelsScreen(self.provider.rows(), current), chosen)

    def show_sessions(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.add_class("shown")
        self.refresh_sessions()
        view = self.query_one("#sessions", ListView)
        view.focus()
        view.call_after_refresh(lambda: setattr(view, "index", view.index if view.index is not None else 0))

    def show_open_session(self, sid: int) -> bool:
        """Bring the tab that already has session `sid` to the front: two tabs writing into one session would
        interleave their messages."""
        for pane in self.query(ConversationPane):
            if pane.conversation.session_id == sid:
                self.query_one(TabbedContent).active = pane.pane_id
                self.query_one(ChatInput).focus()
                if pane is not self._current_pane_or_none():
                    self.notify(f"session {sid} is open in this tab")
                return True
        return False

    def is_open_elsewhere(self, sid: int) -> bool:
        return any(p.conversation.session_id == sid and p is not self._current_pane_or_none()
                   for p in self.query(ConversationPane))

    def theme_in_use(self) -> str:
        return self.theme

    def new_conversation(self) -> None:
        self._hand_input_to_new_tab()
        self.run_worker(self._add_pane(self._new_conversation()), exit_on_error=False)

    def _hand_input_to_new_tab(self) -> None:
        """The input is shared by all tabs: what is typed and unsent stays with its tab (back when that tab
        is shown again), and a new tab starts with an empty input."""
        box = self.query_one(ChatInput)
        current = self._current_pane_or_none()
        if current is not None:
            current.draft = box.text
        box.clear()
        self._draft_owner = None

    def history_changed(self, restore_input: str | None = None) -> None:
        pane = self.pane
        pane.rebuild_soon()
        self._retitle(pane)
        if restore_input is not None:
            self._restore_input(restore_input)
        self._update_status()

    def theme_names(self) -> list[str]:
        return sorted(self.anechat_themes)

    def set_theme(self, name: str) -> None:
        from anechat.config import save_setting

        self.theme = name
        try:
            save_setting("theme", name)
        except AnechatError as e:
            self.notify(f"theme not saved: {e}", severity="warning")

    def quit(self) -> None:
        self.exit()

    async def switch_model(self, name: str) -> None:
        pane = self.pane
        if pane.busy:
            raise UsageError("still answering — Esc stops it, then switch")
        model = await self._obtain(name)
        if model is None:
            return
        pane.conversation.use_model(model)
        self._update_status()
        kept = len(pane.conversation.entries)
        self.say(f"now talking to {model.name} on {model.backend_label}" + (f"; the {kept} earlier message{'s are' if kept != 1 else ' is'} kept" if kept else ""))

    async def pull_model(self, name: str) -> None:
        what = await asyncio.to_thread(self.provider.pull_needed, name)
        if what is None:
            self.say(f"{name} is already installed")
            return
        await self._pull(name, what)
        self.notify(f"{name} installed")

    async def _pull(self, name: str, what: str) -> None:
        screen = PullScreen(name, what)
        await self.push_screen(screen)

        def line(text: str) -> None:
            self.call_from_thread(screen.add_line, text)

        def update(text: str) -> None:
            self.call_from_thread(screen.show_progress, text)

        try:
            await asyncio.to_thread(self.provider.pull, name, line, update)
        finally:
            if screen.is_active:
                screen.dismiss(None)

    async def _obtain(self, name: str):
        """The loaded model, pulling it first (with the progress screen) when it is not installed."""
        status = self.query_one(StatusBar)
        what = await asyncio.to_thread(self.provider.pull_needed, name)
        if what is not None:
            await self._pull(name, what)
        status.show_model(name, None, loading=True)
        try:
            return await asyncio.to_thread(self.provider.load, name)
        finally:
            self._update_status()

    @work(group="load", exclusive=True, exit_on_error=False)
    async def load_model(self, name: str | None, conv: Conversation, resumed: bool = False) -> None:
        try:
            if name is None:
                name = self.provider.default_name()
            if resumed:
                own, note = await self._session_model(conv, name)
                name = own or name
                if note:
                    self.say(note)
            if name is None:
                raise UsageError("no model given and no default model; /models lists them")
            model = await self._obtain(name)
        except AnechatError as e:
            self.notify(str(e), severity="error", timeout=15)
            self._update_status()
            return
        except Exception as e:  # noqa: BLE001 — shown, and the app stays usable (/model tries another)
            self.notify(f"cannot load {name}: {type(e).__name__}: {e}", severity="error", timeout=15)
            self._update_status()
            return
        for pane in self.query(ConversationPane):
            if pane.conversation.model is None:
                pane.conversation.use_model(model)
        self._update_status()

    async def _session_model(self, conv: Conversation, current: str | None) -> tuple[str | None, str | None]:
        from anechat.chat.model import session_model

        sid = conv.session_id
        assert sid is not None  # resumed
        held = conv.store.session(sid).model
        return await asyncio.to_thread(session_model, self.provider, sid, held, current, self.model_given)

    async def follow_session_model(self) -> None:
        """After /resume or a session opened from the sidebar: on to the session's own model, or say why not."""
        pane = self.pane
        conv = pane.conversation
        own, note = await self._session_model(conv, conv.model_name)
        if note:
            self.say(note, pane)
        if own is None:
            return
        previous = conv.model
        conv.model = None  # nothing is sent to the old model meanwhile ("the model is not loaded yet")
        try:
            model = await self._obtain(own)
        except Exception as e:  # noqa: BLE001 — said, and the conversation goes on with the model it had
            conv.model = previous
            self._update_status()
            why = str(e) if isinstance(e, AnechatError) else f"{type(e).__name__}: {e}"
            self.error(f"cannot load {own}, this session's model ({why}); it continues with {conv.model_name}", pane)
            return
        if model is None:
            conv.model = previous
            return
        conv.use_model(model)
        self._update_status()
        self.say(f"session {conv.session_id} continues on its own model, {model.name} on {model.backend_label}", pane)

    # -- status, sidebar, layout ---------------------------------------------------------------------

    def _update_status(self, final: DoneEvent | None = None) -> None:
        pane = self._current_pane_or_none()
        try:
            status = self.query_one(StatusBar)
        except Exception:  # noqa: BLE001 — not mounted yet
            return
        if pane is None:
            return
        conv = pane.conversation
        model = conv.model
        status.show_model(conv.model_name, getattr(model, "backend_label", None), loading=model is None and self._loading())
        status.show_context(self._context_used(conv), getattr(model, "context_length", None))
        if pane.busy:
            self._tick()
            return
        if final is not None and final.finish_reason == "cancelled" and not final.stats.decode_tokens:
            status.show_text("stopped before the first token")
        else:
            status.show_last(conv.last_stats)
        rate = final.stats.decode_tok_s if final else (conv.last_stats.decode_tok_s if conv.last_stats else 0.0)
        status.show_rate(rate, pane.meter.samples, live=False)

    @staticmethod
    def _context_used(conv: Conversation) -> int:
        """What the conversation fills of the context: what the model holds while it answers, else what the
        history comes to (after /model, /undo or /delete the model has not read it yet)."""
        model = conv.model
        if model is None:
            return 0
        count = getattr(model, "count_tokens", None)
        if count is None:
            return model.tokens_in_context()
        try:
            return min(count(conv.chat_messages()), model.context_length)
        except Exception:  # noqa: BLE001 — a figure on the status bar must never break the app
            return model.tokens_in_context()

    def _loading(self) -> bool:
        return any(w.group == "load" and w.is_running for w in self.workers)

    def _tick(self) -> None:
        pane = self._current_pane_or_none()
        if pane is None or not pane.busy:
            return
        status = self.query_one(StatusBar)
        model = pane.conversation.model
        waited = time.monotonic() - pane.asked_at
        if pane.meter.total == 0:
            # Before the first token: the model is busy with another tab's answer, or reading the prompt.
            other = any(p is not pane and p.busy and p.conversation.model is model for p in self.query(ConversationPane))
            status.show_waiting(f"waiting for the model (another tab) · {waited:.0f} s" if other
                                else f"reading the prompt… {waited:.0f} s")
            return
        rate = pane.meter.sample()
        status.show_rate(rate, pane.meter.samples, live=True)
        if pane.first_token_s is not None:
            status.show_text(f"TTFT {pane.first_token_s * 1000:.0f} ms · streaming")
        if model is not None:
            status.show_context(model.tokens_in_context(), model.context_length)

    @on(TabbedContent.TabActivated)
    def _tab_changed(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane
        owner = self._draft_owner
        if isinstance(pane, ConversationPane) and pane is not owner:
            box = self.query_one(ChatInput)
            if owner is not None:
                owner.draft = box.text
                box.text, pane.draft = pane.draft, ""
                box.move_cursor(box.document.end)
            self._draft_owner = pane
        self._update_status()

    def _retitle(self, pane: ConversationPane) -> None:
        with contextlib.suppress(Exception):  # the tab may be closing
            self.query_one(TabbedContent).get_tab(pane.pane_id).label = ConversationPane.tab_label(pane.conversation, pane.title_width)

    def _restore_input(self, text: str, pane: ConversationPane | None = None) -> None:
        if pane is not None and pane is not self._draft_owner:  # its tab is not shown: back into its draft
            if not pane.draft.strip():
                pane.draft = text
            return
        box = self.query_one(ChatInput)
        if not box.text.strip():
            box.text = text
            box.move_cursor(box.document.end)

    def refresh_sessions(self) -> None:
        try:
            view = self.query_one("#sessions", ListView)
            sessions = self.store.list_sessions(limit=100)
        except AnechatError as e:
            self.notify(str(e), severity="warning")
            return
        view.clear()
        view.extend(ListItem(Label(f"{s.id} · {shown_text(s.title or 'untitled')[:40]}", markup=False), name=str(s.id)) for s in sessions)

    @on(ListView.Selected, "#sessions")
    async def _session_chosen(self, event: ListView.Selected) -> None:
        if event.item.name is None:  # every row is named by its session id (refresh_sessions)
            return
        if self.show_open_session(int(event.item.name)):
            return
        conv = self._new_conversation()
        try:
            conv.resume(event.item.name)
        except AnechatError as e:
            self.notify(str(e), severity="error")
            return
        self._hand_input_to_new_tab()
        await self._add_pane(conv)
        self.query_one(ChatInput).focus()
        self._follow_session_model()

    def on_resize(self, event) -> None:
        self._apply_width(event.size.width)

    def _apply_width(self, width: int) -> None:
        self.screen.set_class(width < NARROW, "narrow")

"""One conversation: its messages, model, settings and session record. Shared by TUI and REPL; no UI here.

Every user message is committed to the session store before the model sees it, and the answer is
written ahead while it streams (AnswerWriter), so nothing typed is lost to a crash or a cancel."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

from anechat.engine.generate import DoneEvent, GenerationStats, TokenEvent
from anechat.engine.sampling import SamplingParams
from anechat.errors import UsageError
from anechat.settings import SAMPLING_KEYS, SCHEMA

if TYPE_CHECKING:
    from anechat.chat.model import ChatModel
    from anechat.sessions.store import AnswerWriter, Store


@dataclass
class Entry:
    role: str
    content: str
    id: int | None = None  # row in the session store
    stats: GenerationStats | None = None
    cut_short: bool = False


@dataclass
class Conversation:
    store: Store
    model: ChatModel | None = None  # None while it loads
    model_ref: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    system: str | None = None
    think: bool | None = None
    session_id: int | None = None
    entries: list[Entry] = field(default_factory=list)
    last_stats: GenerationStats | None = None
    last_finish: str | None = None
    # The sampling keys the user chose (settings file, flags, /set, a resumed session): `params` is the
    # model's recommended sampling under these. None: `params` is taken as given and never recomputed.
    chosen: dict | None = None
    writing: AnswerWriter | None = None  # the stored answer being streamed now

    # -- what the model sees -----------------------------------------------------------------------

    def chat_messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": e.role, "content": e.content} for e in self.entries]

    @property
    def title(self) -> str:
        if self.session_id is not None:
            session = self.store.session(self.session_id)
            if session.title:
                return session.title
        return "new chat"

    def _session(self) -> int:
        if self.session_id is None:
            self.session_id = self.store.create_session(self.model_name, self.system, self._settings())
        return self.session_id

    @property
    def model_name(self) -> str | None:
        return getattr(self.model, "name", None) or self.model_ref

    def _settings(self) -> dict:
        return {k: v for k, v in asdict(self.params).items() if v is not None}

    # -- turns ---------------------------------------------------------------------------------------

    def add_user(self, text: str) -> Entry:
        text = text.strip()
        if not text:
            raise UsageError("empty message")
        entry = Entry("user", text, self.store.add_user_message(self._session(), text))
        self.entries.append(entry)
        return entry

    def can_answer(self) -> bool:
        return bool(self.entries) and self.entries[-1].role == "user"

    async def answer(self, cancel: threading.Event | None = None,
                     coalesce_s: float = 0.1) -> AsyncIterator[TokenEvent | DoneEvent]:
        """Stream the model's answer to the last user message. The partial answer stays in the
        conversation (flagged) when the stream is cancelled or the model fails. Tokens may arrive in
        batches up to `coalesce_s` apart: a front end that draws less often need not be woken more often."""
        if self.model is None:
            raise UsageError("no model loaded yet")
        if not self.can_answer():
            raise UsageError("nothing to answer: send a message first")
        messages = self.chat_messages()
        session = self._session()
        writer = self.store.begin_answer(session, self.model.name)
        self.writing = writer
        entry = Entry("assistant", "", writer.message_id, cut_short=True)
        done: DoneEvent | None = None
        parts: list[str] = []
        try:
            async for event in self.model.chat(messages, self.params, enable_thinking=self.think, cancel=cancel,
                                               coalesce_s=coalesce_s):
                if isinstance(event, DoneEvent):
                    done = event
                else:
                    parts.append(event.text)
                    writer.append(event.text)
                yield event
        finally:
            self.writing = None
            entry.content = "".join(parts)
            entry.cut_short = done is None or done.finish_reason == "cancelled"
            entry.stats = done.stats if done else None
            if entry.content or not entry.cut_short:
                self.entries.append(entry)
                writer.finish(asdict(done.stats) if done else None, cut_short=entry.cut_short)
            else:  # nothing was said: no empty answer in the record
                writer.finish(None, cut_short=True)
                self.store.delete_messages(session, [writer.message_id])
            if done is not None:
                self.last_stats, self.last_finish = done.stats, done.finish_reason

    def undo(self) -> str | None:
        """Remove the last exchange (user message and its answer); the user's text is returned so a
        front end can put it back into the input."""
        if not self.entries:
            return None
        cut = len(self.entries) - 1
        while cut > 0 and self.entries[cut].role != "user":
            cut -= 1
        removed, self.entries = self.entries[cut:], self.entries[:cut]
        self._forget(removed)
        if not self.entries and self.session_id is not None:
            # Nothing is left to resume: an empty session in the list would only be clutter. Sending again
            # starts a new one.
            self.store.delete(self.session_id)
            self.session_id = None
        return next((e.content for e in removed if e.role == "user"), None)

    def drop_answer(self) -> bool:
        """For /retry: remove the last answer so the last user message can be answered again."""
        if self.entries and self.entries[-1].role == "assistant":
            self._forget([self.entries.pop()])
        return self.can_answer()

    def _forget(self, entries: list[Entry]) -> None:
        ids = [e.id for e in entries if e.id is not None]
        if ids and self.session_id is not None:
            self.store.delete_messages(self.session_id, ids)

    def clear(self) -> None:
        """Start afresh in the same place: a new session with the same model and settings."""
        self.entries, self.session_id, self.last_stats, self.last_finish = [], None, None, None

    # -- sessions -----------------------------------------------------------------------------------

    def resume(self, ref: str) -> int:
        sid = self.store.resolve(ref)
        session = self.store.session(sid)
        self.entries = [Entry(m.role, m.content, m.id, cut_short=m.cut_short) for m in self.store.messages(sid)
                        if m.role in ("user", "assistant")]
        self.session_id, self.system = sid, session.system_prompt
        known = {k: v for k, v in session.settings.items() if k in SamplingParams.__dataclass_fields__}
        try:
            params = self.params.merged(**known)
            params.validate()
            self.params = params
            if self.chosen is not None:
                self.chosen.update(known)
        except (TypeError, UsageError):
            pass  # a session saved with settings this version rejects keeps the current ones
        return sid

    def rename(self, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            raise UsageError("usage: /rename TITLE")
        self.store.rename(self._session(), title)

    def delete(self) -> int | None:
        sid = self.session_id
        if sid is not None:
            self.store.delete(sid)
        self.clear()
        return sid

    def export(self, fmt: str, path: str | None) -> Path:
        from anechat.sessions.export import EXPORTERS, write_file

        if fmt not in EXPORTERS:
            raise UsageError(f"usage: /export md|json [PATH] (unknown format {fmt!r})")
        if self.session_id is None:
            raise UsageError("nothing to export yet")
        session = self.store.session(self.session_id)
        target = Path(path).expanduser() if path else Path.cwd() / f"anechat-session-{session.id}.{fmt}"
        w = self.writing  # its text so far, whether or not the store has it yet
        messages = [replace(m, writing=True, content=w.text) if w is not None and m.id == w.message_id else m
                    for m in self.store.messages(session.id)]
        write_file(target, EXPORTERS[fmt](session, messages))
        return target

    # -- settings -----------------------------------------------------------------------------------

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        if self.session_id is not None:
            self.store.update_session(self.session_id, system_prompt=self.system)

    def set_param(self, key: str, text: str) -> None:
        if key not in SAMPLING_KEYS:
            raise UsageError(f"/set: unknown key {key!r} (known: {', '.join(SAMPLING_KEYS)})")
        try:
            value = SCHEMA[key].parse(text)
        except ValueError as e:
            raise UsageError(f"/set: {key}: {e}") from None
        self.params = self.params.merged(**{key: value})
        if self.chosen is not None:
            self.chosen[key] = value
        if self.session_id is not None:
            self.store.update_session(self.session_id, settings=self._settings())

    def use_model(self, model) -> None:
        """Switch models; the history stays and the new model reads it on the next answer."""
        self.model = model
        self.model_ref = model.name
        if self.chosen is not None:
            self.params = SamplingParams().merged(**getattr(model, "generation_defaults", {})).merged(**self.chosen)
        if self.session_id is not None:
            self.store.update_session(self.session_id, model=model.name)

"""What a chat front end (TUI, REPL) needs from a model, and where models come from.

The front ends see the `ChatModel` and `Models` protocols only (ModelProvider is the real `Models`), so
pilot tests can script both without loading weights. Nothing here imports a UI toolkit."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import AsyncIterator, Callable, Protocol

from anechat.engine.generate import DoneEvent, TokenEvent
from anechat.engine.loader import LoadedModel
from anechat.engine.sampling import SamplingParams
from anechat.errors import ModelNotFound
from anechat.models.catalog import ModelRow, model_rows

Say = Callable[[str], None]


class ChatModel(Protocol):
    name: str
    backend_label: str
    context_length: int
    shares_cores: bool  # computes on the CPU cores the UI draws on (runtime.select.shares_cores)
    generation_defaults: dict  # its maker's recommended sampling, below the user's settings
    supports_thinking: bool  # its chat template has a thinking switch (/think)

    def tokens_in_context(self) -> int: ...
    def count_tokens(self, messages: list[dict]) -> int: ...

    def chat(self, messages: list[dict], params: SamplingParams, *, enable_thinking: bool | None = None,
             cancel: threading.Event | None = None, coalesce_s: float = 0.1) -> AsyncIterator[TokenEvent | DoneEvent]:
        """`coalesce_s`: the events may arrive in batches at most this often (see Engine.chat)."""


class Models(Protocol):
    """Where a front end gets its models: names, rows to list, pulls and loads."""

    def default_name(self) -> str | None: ...
    def rows(self) -> list[ModelRow]: ...
    def pull_needed(self, name: str) -> str | None: ...
    def pull(self, name: str, say: Say, update: Say | None = None) -> Path: ...
    def load(self, name: str) -> ChatModel: ...


class EngineModel:
    """A loaded model directory behind the generation engine."""

    def __init__(self, loaded: LoadedModel) -> None:
        from anechat.engine.generate import Engine
        from anechat.runtime.select import backend_label, shares_cores

        self.loaded = loaded
        self.name = loaded.name
        self.backend_label = backend_label(loaded.backend)
        self.shares_cores = shares_cores(loaded.backend)
        self.context_length = loaded.lm.context_length
        self.generation_defaults = dict(loaded.generation)
        self.supports_thinking = loaded.tokenizer.supports_thinking
        self.engine = Engine(loaded.lm, loaded.tokenizer)

    def tokens_in_context(self) -> int:
        return len(self.loaded.lm.cached_ids)

    def count_tokens(self, messages: list[dict]) -> int:
        """How much of the context `messages` fill once read (0 for none): the status bar's figure right after
        a /model switch, /undo or /delete, before the model has read the history again."""
        return len(self.loaded.tokenizer.encode_chat(messages)) if messages else 0

    def chat(self, messages: list[dict], params: SamplingParams, *, enable_thinking: bool | None = None,
             cancel: threading.Event | None = None, coalesce_s: float = 0.1) -> AsyncIterator[TokenEvent | DoneEvent]:
        return self.engine.chat(messages, params, enable_thinking=enable_thinking, cancel=cancel, coalesce_s=coalesce_s)


def model_directory(path: str) -> Path:
    """An explicit model directory (`--model-dir`), checked before anything loads."""
    out = Path(path).expanduser()
    if not out.exists():
        raise ModelNotFound(f"model directory {out} does not exist")
    if not out.is_dir():
        raise ModelNotFound(f"{out} is not a directory")
    return out


class ModelProvider:
    """Finds, pulls and loads models by name or directory; loaded models are kept for reuse, so
    switching back to a model (or opening a second tab on it) costs nothing. The one place that turns a
    model name into a directory, pulling it when needed: pipe mode, the REPL, the TUI and `bench` all
    come here, and each says what is happening its own way (`say`)."""

    def __init__(self, *, backend: str = "auto", compute_units: str | None = None, strict_fp16: bool = False,
                 offline: bool = False) -> None:
        self.backend, self.compute_units, self.strict_fp16, self.offline = backend, compute_units, strict_fp16, offline
        self._loaded: dict[str, ChatModel] = {}
        self._lock = threading.Lock()

    def default_name(self) -> str | None:
        from anechat.models.registry import load_registry

        return load_registry().default

    def rows(self) -> list[ModelRow]:
        return model_rows()

    def pull_needed(self, name: str) -> str | None:
        """None when `name` is a directory or an installed model; otherwise what will be downloaded
        (raises ModelNotFound for a name nobody knows)."""
        from anechat.models import store
        from anechat.models.registry import load_registry, suggest

        have = store.installed()
        if Path(name).expanduser().is_dir() or name in have:
            return None
        registry = load_registry()
        if name not in registry.entries:
            known = set(registry.entries) | set(have)
            raise ModelNotFound(f"unknown model {name!r}{suggest(name, known)}; see `anechat models list`")
        e = registry.get(name)
        what = e.title + (f", about {e.download_mb:.0f} MB to download" if e.download_mb else "")
        if e.format == "convert":  # most of the wait can be the conversion, not the download
            what += ", then converted here (minutes, once)"
        return what + (f", {e.size_mb:.0f} MB installed" if e.size_mb else "")

    def pull(self, name: str, say: Say, update: Say | None = None) -> Path:
        """`say` hears each step; `update`, when given, the progress lines repeated while a step goes on."""
        from anechat.models import store
        from anechat.models.registry import load_registry

        return store.pull(load_registry().get(name), say, offline=self.offline, update=update)

    def resolve(self, name: str | None, say: Say) -> Path:
        """The directory of model `name` (the registry's default when None): a directory given by path, an
        installed model, or one pulled now."""
        from anechat.models import store

        name = name or self.default_name()
        if name is None:
            raise ModelNotFound("no model given and no default model: pass --model-dir DIR or -m NAME")
        what = self.pull_needed(name)
        if what is not None:
            say(f"{name} is not installed; pulling it ({what})")
            return self.pull(name, lambda line: say(f"  {line}"))
        path = Path(name).expanduser()
        return path if path.is_dir() else store.installed()[name].path

    def load(self, name: str, say: Say = lambda _: None) -> ChatModel:
        """Blocking: call it off the event loop. The front ends pull with their own progress display
        first, so `say` hears only of a model that went missing in between."""
        from anechat.engine.loader import load_model

        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            loaded = load_model(self.resolve(name, say), backend=self.backend, compute_units=self.compute_units,
                                strict_fp16=self.strict_fp16)
            model = EngineModel(loaded)
            self._loaded[name] = model
            return model


def session_model(provider: Models, sid: int, held: str | None, current: str | None,
                  given: bool) -> tuple[str | None, str | None]:
    """The model a resumed session continues with: (the name to load, None to keep `current`; a line saying
    why it is not the session's own model, None when nothing needs saying). A session continues on the model
    it was held with when that model is here; a model named on the command line (`given`) wins, said plainly.
    Blocking (reads the models directory): call it off the event loop."""
    if not held or held == current:
        return None, None
    now = current or "the default model"
    if given:
        return None, f"session {sid} was held with {held}; it continues with {now} as asked (/model {held} switches back)"
    try:
        missing = provider.pull_needed(held)
    except ModelNotFound:
        return None, f"session {sid} was held with {held}, which is not installed or known here; it continues with {now}"
    if missing is not None:
        return None, (f"session {sid} was held with {held}, which is not installed; it continues with {now} "
                      f"(/model {held} pulls it: {missing})")
    return held, None

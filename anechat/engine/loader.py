"""From CLI-level choices (model name or dir, backend) to a ready Engine. Shared by pipe, REPL, TUI, bench."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anechat.errors import AnechatError, ModelLoadError, ModelNotFound

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    model_dir: Any  # anechat.runtime.modeldir.ModelDir
    backend: Any
    lm: Any  # anechat.engine.lm.ChunkedLM
    tokenizer: Any  # anechat.engine.tokenizer.ChatTokenizer


def resolve_model_dir(model: str | None, model_dir: str | None, offline: bool = False) -> Path:
    """An explicit directory, or a model by name (the registry's default when none is given): installed
    under the data dir, or pulled now (saying what and how big)."""
    if model_dir:
        path = Path(model_dir).expanduser()
        if not path.exists():
            raise ModelNotFound(f"model directory {path} does not exist")
        if not path.is_dir():
            raise ModelNotFound(f"{path} is not a directory")
        return path
    from anechat.models import store
    from anechat.models.registry import load_registry, suggest

    have = store.installed()
    registry = load_registry()
    name = model or registry.default
    if name is None:
        raise ModelNotFound("no model given and no default model: pass --model-dir DIR or -m NAME")
    if name in have:
        return have[name].path
    if name not in registry.entries:
        raise ModelNotFound(f"unknown model {name!r}{suggest(name, set(registry.entries) | set(have))}; see `anechat models list`")
    entry = registry.get(name)
    size = f", about {entry.download_mb:.0f} MB to download" if entry.download_mb else ""
    print(f"anechat: {name} is not installed; pulling it ({entry.title}{size})", file=sys.stderr, flush=True)
    return store.pull(entry, lambda line: print(f"  {line}", file=sys.stderr, flush=True), offline=offline)


def load_model(path: Path, *, backend: str = "auto", compute_units: str | None = None, strict_fp16: bool = False) -> LoadedModel:
    """Open a model directory on a backend. A backend that compiles at the first predict (Core ML) is warmed
    up here, so a model it cannot run fails now. With backend "auto", a model Core ML cannot load or run
    falls back to the portable runtime with a one-line warning; an explicit `--backend coreml` fails."""
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.select import get_backend

    md = open_model_dir(path)
    be = get_backend(backend, compute_units=compute_units, strict_fp16=strict_fp16)
    try:
        return _load_on(md, be, path)
    except ModelLoadError as e:
        if backend != "auto" or be.name == "portable":
            raise
        log.warning("anechat: warning: Core ML cannot run this model (%s); using the portable runtime", e)
        return _load_on(md, get_backend("portable"), path)


def _load_on(md, be, path: Path) -> LoadedModel:
    from anechat.engine.lm import ChunkedLM
    from anechat.engine.tokenizer import ChatTokenizer

    try:
        if getattr(be, "needs_warm_up", False):
            from anechat.engine.coreml_probe import ensure_first_run_survives

            ensure_first_run_survives(md, be)
        lm = ChunkedLM(md, be)
        if getattr(be, "needs_warm_up", False):
            lm.warm_up()
        tokenizer = ChatTokenizer.from_dir(md.path)
    except AnechatError:
        raise
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise ModelLoadError(f"{path}: {e}") from None
    return LoadedModel(name=getattr(md, "name", None) or path.name, model_dir=md, backend=be, lm=lm, tokenizer=tokenizer)

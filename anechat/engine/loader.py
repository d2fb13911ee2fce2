"""From CLI-level choices (model name or dir, backend) to a ready Engine. Shared by pipe, REPL, TUI, bench."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anechat.errors import AnechatError, ModelLoadError, ModelNotFound


@dataclass
class LoadedModel:
    name: str
    model_dir: Any  # anechat.runtime.modeldir.ModelDir
    backend: Any
    lm: Any  # anechat.engine.lm.ChunkedLM
    tokenizer: Any  # anechat.engine.tokenizer.ChatTokenizer


def resolve_model_dir(model: str | None, model_dir: str | None) -> Path:
    """An explicit directory, or a model name installed under the data dir."""
    if model_dir:
        path = Path(model_dir).expanduser()
        if not path.exists():
            raise ModelNotFound(f"model directory {path} does not exist")
        if not path.is_dir():
            raise ModelNotFound(f"{path} is not a directory")
        return path
    from anechat.paths import models_dir

    if model:
        candidate = models_dir() / model
        if candidate.is_dir():
            return candidate
        installed = sorted(p.name for p in models_dir().iterdir() if (p / "meta.yaml").is_file()) if models_dir().is_dir() else []
        hint = f"installed: {', '.join(installed)}" if installed else f"none installed in {models_dir()}"
        raise ModelNotFound(f"unknown model {model!r} ({hint}); or pass --model-dir DIR")
    raise ModelNotFound("no model given: pass --model-dir DIR or -m NAME")


def load_model(path: Path, *, backend: str = "auto", compute_units: str | None = None, strict_fp16: bool = False) -> LoadedModel:
    from anechat.engine.lm import ChunkedLM
    from anechat.engine.tokenizer import ChatTokenizer
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.select import get_backend

    md = open_model_dir(path)
    be = get_backend(backend, compute_units=compute_units, strict_fp16=strict_fp16)
    try:
        lm = ChunkedLM(md, be)
        tokenizer = ChatTokenizer.from_dir(md.path)
    except AnechatError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{path}: {e}") from None
    return LoadedModel(name=getattr(md, "name", None) or path.name, model_dir=md, backend=be, lm=lm, tokenizer=tokenizer)

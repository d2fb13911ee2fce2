"""From a model directory and a backend choice to a loaded model. Headless: finding or pulling the
directory is the business of the layer that talks to the user (anechat.chat.model.ModelProvider)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from anechat.errors import AnechatError, ModelLoadError

if TYPE_CHECKING:
    from anechat.engine.lm import LanguageModel
    from anechat.engine.tokenizer import ChatTokenizer
    from anechat.runtime.backend import Backend
    from anechat.runtime.modeldir import ModelDir


@dataclass
class LoadedModel:
    name: str
    model_dir: ModelDir
    backend: Backend
    lm: LanguageModel
    tokenizer: ChatTokenizer


def load_model(path: Path, *, backend: str = "auto", compute_units: str | None = None, strict_fp16: bool = False) -> LoadedModel:
    from anechat.engine.lm import LanguageModel
    from anechat.engine.tokenizer import ChatTokenizer
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.select import get_backend

    md = open_model_dir(path)
    be = get_backend(backend, compute_units=compute_units, strict_fp16=strict_fp16)
    try:
        lm = LanguageModel(md, be)
        tokenizer = ChatTokenizer.from_dir(md.path)
    except AnechatError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{path}: {e}") from None
    return LoadedModel(name=getattr(md, "name", None) or path.name, model_dir=md, backend=be, lm=lm, tokenizer=tokenizer)

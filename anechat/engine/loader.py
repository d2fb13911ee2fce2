"""From a model directory and a backend choice to a loaded model. Headless: finding or pulling the
directory is the business of the layer that talks to the user (anechat.chat.model.ModelProvider)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from anechat.errors import AnechatError, ModelLoadError, WrongOutput

if TYPE_CHECKING:
    from anechat.engine.lm import LanguageModel
    from anechat.engine.tokenizer import ChatTokenizer
    from anechat.runtime.backend import Backend
    from anechat.runtime.modeldir import ModelDir

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    model_dir: ModelDir
    backend: Backend
    lm: LanguageModel
    tokenizer: ChatTokenizer
    generation: dict = field(default_factory=dict)  # the model's recommended sampling (settings.generation_defaults)


def generation_defaults(path: Path) -> dict:
    """The sampling a model directory recommends in its generation_config.json ({} without one, or for a
    file that does not parse: a model runs without its recommendation rather than not at all)."""
    import json

    from anechat.settings import GENERATION_CONFIG
    from anechat.settings import generation_defaults as parse

    try:
        return parse(json.loads((Path(path) / GENERATION_CONFIG).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def load_model(path: Path, *, backend: str = "auto", compute_units: str | None = None, strict_fp16: bool = False,
               wrap: Callable[[Backend], Backend] | None = None) -> LoadedModel:
    """Open a model directory on a backend. A backend that compiles at the first predict (Core ML) is warmed
    up here, so a model it cannot run fails now. With backend "auto", a model Core ML cannot load or run
    falls back to the portable runtime with a one-line warning; an explicit `--backend coreml` fails. A model
    the Neural Engine answers wrongly (WrongOutput, per-block int8) falls back to Core ML on CPU_AND_GPU when
    that answers right. `wrap`, when given, wraps the backend the model ends up on (`anechat bench` times its
    predictions), so a benchmark runs where a chat would."""
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.select import get_backend

    def load_on(be: Backend) -> LoadedModel:
        return _load_on(md, wrap(be) if wrap is not None else be, path)

    md = open_model_dir(path)
    be = get_backend(backend, compute_units=compute_units, strict_fp16=strict_fp16)
    try:
        return load_on(be)
    except ModelLoadError as e:
        if backend != "auto" or be.name == "portable":
            raise
        if not isinstance(e, WrongOutput):
            log.warning("anechat: warning: Core ML cannot run this model (%s); using the portable runtime", e)
            return load_on(get_backend("portable"))
        wrong = e
    # The Neural Engine answers wrongly (per-block int8): the GPU if it answers right, else the portable runtime.
    if getattr(be, "uses_neural_engine", False):
        try:
            loaded = load_on(get_backend("coreml", compute_units="CPU_AND_GPU"))
            log.warning("anechat: warning: %s; using Core ML CPU_AND_GPU", wrong)
            return loaded
        except ModelLoadError:
            pass
    log.warning("anechat: warning: %s; using the portable runtime", wrong)
    return load_on(get_backend("portable"))


def _load_on(md: ModelDir, be: Backend, path: Path) -> LoadedModel:
    from anechat.engine.lm import LanguageModel
    from anechat.engine.tokenizer import ChatTokenizer

    try:
        if getattr(be, "needs_warm_up", False):
            from anechat.engine.coreml_probe import ensure_first_run_survives

            ensure_first_run_survives(md, be)
        lm = LanguageModel(md, be)
        if getattr(be, "needs_warm_up", False):
            lm.warm_up()
        tokenizer = ChatTokenizer.from_dir(md.path)
    except AnechatError:
        raise
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise ModelLoadError(f"{path}: {e}") from None
    return LoadedModel(name=getattr(md, "name", None) or path.name, model_dir=md, backend=be, lm=lm, tokenizer=tokenizer,
                       generation=generation_defaults(md.path))

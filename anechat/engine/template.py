"""Chat templates rendered in jinja2's immutable sandbox: a model's template is untrusted input and must
not reach files, modules or Python internals."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from anechat.errors import AnechatError


class TemplateError(AnechatError):
    pass


def _raise(message: str):
    raise TemplateError(f"chat template error: {message}")


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["tojson"] = lambda v, indent=None, ensure_ascii=False: json.dumps(v, indent=indent, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as e:
        raise TemplateError(f"chat template does not parse (line {e.lineno}: {e.message})") from None


def render_chat_template(template: str, messages, *, add_generation_prompt: bool = True, bos_token: str = "",
                         eos_token: str = "", enable_thinking: bool | None = None, **extra) -> str:
    from jinja2.exceptions import SecurityError
    from jinja2.exceptions import TemplateError as JinjaError

    context = dict(messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                   eos_token=eos_token, **extra)
    if enable_thinking is not None:
        context["enable_thinking"] = enable_thinking
    try:
        return _compile(template).render(**context)
    except SecurityError as e:
        raise TemplateError(f"chat template tried something unsafe and was stopped ({e})") from None
    except (JinjaError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as e:
        raise TemplateError(f"chat template failed: {e}") from None

"""Every user setting, defined once: name, type, range, default and help.

The command-line flags, `/set`, the settings file, `anechat config` and the sampler's checks are all
derived from SCHEMA, so a key cannot be accepted in one place and refused (or bounded differently) in
another. Import-light: the CLI parses flags with it before anything heavy loads."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

THEME_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_TYPE_NAMES = {float: "a number", int: "an integer", str: "text"}


def _always(value: Any) -> bool:
    return True


@dataclass(frozen=True)
class Setting:
    name: str
    type: type  # str, int or float
    default: Any  # in force when nothing sets it; None: nothing (or, for default_model, the registry's)
    help: str
    ok: Callable[[Any], bool] = _always
    why: str = ""  # what `ok` demands, said when a value fails it
    flags: tuple[str, ...] = ()  # command-line options; none: the file and `anechat config` only
    sampling: bool = False  # a sampler parameter, and so a /set key

    @property
    def dest(self) -> str:
        """The argparse destination of its flag."""
        return self.flags[-1].lstrip("-").replace("-", "_") if self.flags else self.name

    def check(self, value: Any) -> Any:
        """The value in its canonical type, or ValueError with the reason (without the key)."""
        # YAML's true/false are ints to Python; no setting here is a boolean.
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.type is float else self.type):
            raise ValueError(f"must be {_TYPE_NAMES[self.type]} (got {value!r})")
        value = self.type(value)
        if self.type is float and not math.isfinite(value):
            raise ValueError(f"must be a finite number (got {value!r})")
        if not self.ok(value):
            raise ValueError(f"{self.why} (got {value!r})")
        return value

    def convert(self, text: str) -> Any:
        """Text typed by a user, in the setting's type (unchecked), or ValueError with the reason."""
        try:
            return self.type(text)
        except ValueError:
            raise ValueError(f"must be {_TYPE_NAMES[self.type]} (got {text!r})") from None

    def parse(self, text: str) -> Any:
        """Text typed by a user, converted and checked; ValueError with the reason."""
        return self.check(self.convert(text))

    def add_flag(self, parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup) -> None:
        def convert(text: str) -> Any:
            try:
                return self.convert(text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None

        shown = "" if self.default is None else f" (default {self.default})"
        if self.name in _HF_SAMPLING.values():
            # A model's generation_config.json sits between this default and the settings file: say so, or the
            # help names a value that is not in force (`config show` gives the one that is).
            shown = f" (default {self.default} unless the model recommends another; `anechat config show` lists what is in force)"
        parser.add_argument(*self.flags, dest=self.dest, type=convert, default=None, help=self.help + shown)


SCHEMA: dict[str, Setting] = {s.name: s for s in (
    Setting("default_model", str, None, "model by name: installed, or pulled from the registry (default: the "
            "registry's default model)", lambda v: bool(v.strip()), "must not be empty", flags=("-m", "--model")),
    Setting("system_prompt", str, None, "system prompt", flags=("--system",)),
    Setting("theme", str, "ane-dark", "colour theme of the full-screen UI", lambda v: bool(THEME_NAME.fullmatch(v)),
            "must be a theme name (lowercase, digits, - or _)"),
    Setting("temperature", float, 0.7, "sampling temperature, 0 = greedy", lambda v: 0 <= v <= 10,
            "must be in [0, 10] (0 = greedy)", flags=("--temperature",), sampling=True),
    Setting("top_p", float, 1.0, "nucleus sampling: the smallest set of tokens with this much probability",
            lambda v: 0 < v <= 1, "must be in (0, 1]", flags=("--top-p",), sampling=True),
    Setting("top_k", int, 0, "sample from the k most probable tokens, 0 = off", lambda v: v >= 0,
            "must be ≥ 0 (0 = off)", flags=("--top-k",), sampling=True),
    Setting("min_p", float, 0.0, "drop tokens less probable than this fraction of the best one",
            lambda v: 0 <= v < 1, "must be in [0, 1)", flags=("--min-p",), sampling=True),
    Setting("repeat_penalty", float, 1.0, "penalty on recently generated tokens, 1 = off", lambda v: v > 0,
            "must be > 0 (1 = off)", flags=("--repeat-penalty",), sampling=True),
    Setting("seed", int, None, "random seed, for reproducible sampling", lambda v: 0 <= v < 2**32,
            "must be in [0, 2**32)", flags=("--seed",), sampling=True),
    Setting("max_tokens", int, 512, "most tokens in one answer", lambda v: v >= 1, "must be ≥ 1",
            flags=("--max-tokens",), sampling=True),
)}
SAMPLING_KEYS = tuple(name for name, s in SCHEMA.items() if s.sampling)
BY_DEST = {s.dest: s for s in SCHEMA.values()}

# generation_config.json (Hugging Face's name for a model's recommended sampling) → our sampling keys.
GENERATION_CONFIG = "generation_config.json"
_HF_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                "repetition_penalty": "repeat_penalty"}


def generation_defaults(config: Any) -> dict[str, Any]:
    """The sampling values a model's generation_config.json recommends, as settings (checked; a value out
    of range or of the wrong type is left out rather than trusted). `do_sample: false` alone means greedy."""
    if not isinstance(config, dict):
        return {}
    out = {}
    for hf_key, key in _HF_SAMPLING.items():
        if config.get(hf_key) is not None:
            try:
                out[key] = SCHEMA[key].check(config[hf_key])
            except ValueError:
                continue
    if config.get("do_sample") is False and "temperature" not in out:
        out["temperature"] = 0.0
    return out

"""`anechat ARGS` in this process with one phase's real work repeated without end (issue 28).

On a tiny model every phase takes milliseconds, too short to send a signal into. The driver makes one
phase last: the first call of that phase's function says so on stderr ("phase-driver: in PHASE") and then
runs the real function again and again with the same arguments, the way a large model or a long prompt
keeps it busy. A test sends a real signal (SIGTERM, SIGINT) once the line appears; the process can only
end through the signal, and how long it takes is the exit latency of that phase.

    python tests/phase_driver.py PHASE [anechat arguments...]
"""

from __future__ import annotations

import signal
import sys

PHASES = ("load", "tokenizing", "prefill", "decode", "long-step", "checksums", "diagnose")
# (phase, command) pairs the tests and benchmarks/bench_signal_exit.py run. A template's rendering, convert
# and pull have tests of their own, with work that lasts by itself (test_bad_inputs_templates.py,
# test_bad_inputs_signals.py).
CASES = [
    ("load", "pipe"), ("tokenizing", "pipe"), ("prefill", "pipe"), ("decode", "pipe"), ("long-step", "pipe"),
    ("checksums", "verify"), ("load", "verify"), ("prefill", "verify"),
    ("load", "doctor"), ("diagnose", "doctor"), ("load", "bench"),
    ("load", "serve"), ("tokenizing", "serve"), ("prefill", "serve"), ("decode", "serve"), ("long-step", "serve"),
]
PROMPT = "tell me a story"


def command(kind: str, model) -> list[str]:
    """The anechat arguments of a case; "verify" needs the model installed as "tiny" (`models add`), "serve"
    a request sent once it listens (see SERVE_REQUEST). The decode lasts with a model that greedily answers
    PROMPT without end (the tests' endless_model)."""
    if kind == "pipe":
        return ["--model-dir", str(model), "-p", PROMPT, "--session", "new", "--max-tokens", "1000000", "--temperature", "0"]
    if kind == "verify":
        return ["models", "verify", "tiny"]
    if kind == "doctor":
        return ["doctor", "--model-dir", str(model)]
    if kind == "serve":
        return ["serve", "--model-dir", str(model), "--port", "0"]
    return ["bench", "--model-dir", str(model), "--prompt-tokens", "8", "--gen", "4"]


SERVE_REQUEST = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1_000_000, "temperature": 0}


def _announce(phase: str) -> None:
    print(f"phase-driver: in {phase}", file=sys.stderr, flush=True)


def _repeat(owner, name: str, phase: str) -> None:
    real = getattr(owner, name)

    def again(*a, **k):
        _announce(phase)
        while True:
            real(*a, **k)

    setattr(owner, name, again)


def _stretch(phase: str) -> None:
    if phase == "load":  # every command's model load: each part read, parsed and expanded, again and again
        from anechat.engine.lm import LanguageModel

        _repeat(LanguageModel, "__init__", phase)
    elif phase == "tokenizing":  # a long prompt: the same text tokenized again and again, with the caller's cancel
        from anechat.engine.tokenizer import ChatTokenizer

        real_encode = ChatTokenizer.encode

        def encode(self, text, add_special_tokens=False, cancel=None, max_bytes=None):
            _announce(phase)
            long = text * max(1, 400_000 // max(len(text), 1))
            while True:
                real_encode(self, long, add_special_tokens, cancel=cancel)

        ChatTokenizer.encode = encode  # type: ignore[method-assign]
    elif phase == "prefill":  # a long prompt: its blocks run again and again over the same positions
        from anechat.engine.lm import LanguageModel

        real_fill = LanguageModel._fill

        def fill(self, ids, want_logits, cancel=None):
            _announce(phase)
            before = list(self.cached_ids)
            while True:
                real_fill(self, ids, want_logits, cancel)
                self.cached_ids = list(before)

        LanguageModel._fill = fill  # type: ignore[method-assign]
    elif phase == "decode":  # lasts by itself (an answer of a million tokens): only said when it starts
        from anechat.engine.lm import LanguageModel

        real_step = LanguageModel.step

        def step(self, token_id):
            if not getattr(step, "said", False):
                step.said = True  # type: ignore[attr-defined]
                _announce(phase)
            return real_step(self, token_id)

        LanguageModel.step = step  # type: ignore[method-assign]
    elif phase == "long-step":  # one decoding step that lasts, as the first one does while the kernels compile
        import time

        from anechat.engine.lm import LanguageModel

        real_step = LanguageModel.step

        def step(self, token_id):
            _announce(phase)
            time.sleep(600)  # a step in the generating thread: no signal reaches it
            return real_step(self, token_id)

        LanguageModel.step = step  # type: ignore[method-assign]
    elif phase == "checksums":  # `models verify` of a large model: every file hashed
        import anechat.checksums

        _repeat(anechat.checksums, "hash_file", phase)
    elif phase == "diagnose":  # `doctor`: teacher-forced logits compared
        import anechat.engine.diagnose

        _repeat(anechat.engine.diagnose, "teacher_forced", phase)
    else:
        raise SystemExit(f"phase-driver: unknown phase {phase!r} (one of {', '.join(PHASES)})")


def main() -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl+C as in a terminal, even if started ignoring it
    _stretch(sys.argv[1])
    sys.argv = ["anechat", *sys.argv[2:]]
    from anechat.cli import main as anechat

    return anechat()


if __name__ == "__main__":
    sys.exit(main())

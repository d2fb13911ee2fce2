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

PHASES = ("load", "tokenizing", "prefill", "checksums", "diagnose")


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

"""Command-line entry point. Imports stay lazy: `anechat --version` must not pay for numpy or coremltools."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, Sequence

from anechat import __version__
from anechat.errors import EXIT_ERROR, EXIT_INTERRUPTED, AnechatError, exit_code

# subcommand name -> "module:function" that adds its parser to the subparsers object
SUBCOMMANDS: dict[str, str] = {
    "convert": "anechat.commands.convert:add_parser",
    "inspect": "anechat.commands.inspect:add_parser",
    "bench": "anechat.commands.bench:add_parser",
    "doctor": "anechat.commands.doctor:add_parser",
    "models": "anechat.commands.models:add_parser",
    "sessions": "anechat.commands.sessions:add_sessions_parser",
    "config": "anechat.commands.config:add_parser",
    "serve": "anechat.commands.serve:add_parser",
}


def _load(spec: str) -> Callable:
    import importlib

    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def add_model_arguments(p: argparse.ArgumentParser, runtime: bool = True) -> None:
    """Model selection (and, with runtime, the runtime flags) shared by chat, pipe, bench and doctor."""
    from anechat.settings import SCHEMA

    g = p.add_mutually_exclusive_group()
    SCHEMA["default_model"].add_flag(g)
    g.add_argument("--model-dir", help="path to an ANEMLL-layout model directory")
    if not runtime:
        return
    p.add_argument(
        "--backend",
        choices=("auto", "coreml", "portable"),
        default="auto",
        help="runtime: Core ML (macOS) or anechat's portable numpy executor (default: auto)",
    )
    p.add_argument(
        "--compute-units",
        choices=("CPU_AND_NE", "ALL", "CPU_ONLY", "CPU_AND_GPU"),
        default=None,
        help="Core ML compute units: CPU_AND_NE (default: the Neural Engine, CPU where it cannot), ALL (GPU too), "
        "CPU_ONLY, CPU_AND_GPU",
    )
    p.add_argument("--strict-fp16", action="store_true", help="portable backend: round every op to fp16 like the ANE")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The system prompt and sampling flags, from the settings schema (checked before any model loads)."""
    from anechat.settings import SCHEMA

    for setting in SCHEMA.values():
        if setting.flags and setting.name != "default_model":
            setting.add_flag(p)
    think = p.add_mutually_exclusive_group()
    think.add_argument("--think", dest="think", action="store_true", default=None, help="enable thinking (Qwen3)")
    think.add_argument("--no-think", dest="think", action="store_false", help="disable thinking")


def chat_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anechat",
        description="Chat with LLMs on the Apple Neural Engine (portable numpy runtime elsewhere). "
        "On a terminal: interactive chat; with stdin piped: answer once on stdout.",
        epilog="subcommands: " + ", ".join(SUBCOMMANDS) + "  (anechat SUBCOMMAND --help)",
    )
    p.add_argument("--version", action="version", version=f"anechat {__version__}")
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("-p", "--prompt", help="the user message (instead of reading stdin)")
    p.add_argument("--plain", action="store_true", help="line-by-line chat (prompt_toolkit) instead of the full-screen UI")
    p.add_argument("--json", action="store_true", help="pipe mode: print one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="pipe mode: statistics on stderr")
    session = p.add_mutually_exclusive_group()
    session.add_argument("--session", metavar="ID|new", help="continue session ID (or start a new one) and save the exchange")
    session.add_argument("--resume", nargs="?", const="last", metavar="ID", help="continue session ID, the last one when no ID is given")
    return p


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anechat")
    sub = p.add_subparsers(dest="command", required=True)
    _load(SUBCOMMANDS[name])(sub)
    return p


def _quiet_libraries() -> None:
    # coremltools logs "Failed to load _MLModelProxy" and sklearn version warnings on import on Linux;
    # they are expected there and only confuse users.
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    log = logging.getLogger("anechat")
    if not any(getattr(h, "anechat_stderr", False) for h in log.handlers):
        # anechat's warnings, one line each on whatever stderr is when they happen (the full-screen UI swaps it)
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: print(handler.format(record), file=sys.stderr, flush=True)  # type: ignore[method-assign]
        handler.anechat_stderr = True  # type: ignore[attr-defined]
        log.addHandler(handler)


class OutputError(AnechatError):
    """stdout is closed or cannot take more (`>&-`, `> /dev/full`)."""


class _Output:
    """stdout when it is not a terminal: a failed write becomes one OutputError line instead of a traceback
    (and of Python's "Exception ignored" at exit)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def _do(self, method: str, *args):
        if self.stream is None:
            raise OutputError("cannot write the output: stdout is closed")
        try:
            return getattr(self.stream, method)(*args)
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:  # ValueError: write to a closed file object
            raise OutputError(f"cannot write the output: {getattr(e, 'strerror', None) or e}") from None

    def write(self, text: str) -> int:
        return self._do("write", text)

    def flush(self) -> None:
        self._do("flush")

    def isatty(self) -> bool:
        return self.stream is not None and self.stream.isatty()

    def __getattr__(self, name: str):
        if self.stream is None:
            raise AttributeError(name)
        return getattr(self.stream, name)


def _discard_stdout() -> None:
    """Point stdout's file at /dev/null, so what is still buffered cannot fail again at exit."""
    stream = getattr(sys.stdout, "stream", sys.stdout)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = stream.fileno() if stream is not None else 1
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


def main(argv: Sequence[str] | None = None) -> int:
    process = argv is None  # the process's own command line (not a caller in the same process, e.g. a test)
    argv = list(sys.argv[1:] if argv is None else argv)
    if sys.stderr is None:  # `2>&-`: print(file=None) would write error lines to stdout
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 — lives as long as the process
    real_stdout = sys.stdout
    if real_stdout is None or not real_stdout.isatty():
        sys.stdout = _Output(real_stdout)
    try:
        code = _run(argv)
    finally:
        sys.stdout = real_stdout
    from anechat import signals

    if process and (code >= EXIT_INTERRUPTED or signals.stopping):  # 130 interrupted, 143 terminated
        _leave_now(code)
    return code


def _leave_now(code: int) -> None:
    """Interrupted: what the command owns is cleaned and saved, and the process ends now. The interpreter's
    own ending would take long: it joins every thread still running, daemon or not, when a pool made it
    (huggingface_hub's parallel downloads of a stalled file, for one), and it tears down every module (about
    0.9 s once coremltools is imported). The exit functions still run (temporary files, logs, Python's own
    cleanups registered with atexit), the streams are flushed, then the process leaves."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _run(argv: list[str]) -> int:
    from anechat.signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt

    try:
        if argv and argv[0] in SUBCOMMANDS:
            args = subcommand_parser(argv[0]).parse_args(argv)
        else:
            args = chat_parser().parse_args(argv)
            args.func = _load("anechat.commands.chat:run")
        _quiet_libraries()
        # The interactive UIs and the server own their signals; every other command ends on SIGTERM as on Ctrl+C.
        if getattr(args, "command", None) in (None, "serve"):
            code = int(args.func(args) or 0)
        else:
            with sigterm_as_interrupt():
                code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except OutputError as e:
        print(f"anechat: {e}", file=sys.stderr)
        _discard_stdout()
        return exit_code(e)
    except AnechatError as e:
        print(f"anechat: {e}", file=sys.stderr)
        return exit_code(e)
    except Terminated:
        print("anechat: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("anechat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`anechat ... | head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as e:  # last resort: one line, the traceback only on request
        if os.environ.get("ANECHAT_DEBUG"):
            raise
        print(f"anechat: internal error: {type(e).__name__}: {e} (set ANECHAT_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_ERROR

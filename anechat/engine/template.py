"""Chat templates rendered in jinja2's immutable sandbox, in a helper process with a deadline.

A model's template is untrusted input. The sandbox keeps it from files, modules and Python internals, but
not from work: jinja2 limits one range(), not three nested ones, and nothing limits recursion through
macros or a string doubled in a loop. A thread cannot be stopped from outside and a single C operation
("x" * 10**10) ignores any cooperative check, so the template runs in a small process of its own that is
killed when it passes the deadline, when the caller cancels (Ctrl+C, SIGTERM, a client that left), or
when it outgrows its memory bound; the process is started once and reused for every render."""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime
from functools import lru_cache
from typing import Any

from anechat.errors import ModelLoadError

# Bounds on one rendering. A prompt longer than any context anechat runs is of no use (the pipe refuses
# more than 1 MiB of input, a served body is capped at 8 MiB), and no real template needs seconds.
RENDER_SECONDS = 10.0
RENDER_CHARS = 16 << 20
WORKER_MEMORY = 1 << 30  # address space of the rendering process (Linux; macOS ignores RLIMIT_AS)
_POLL_S = 0.05  # how often a waiting caller looks at its cancel flag


class TemplateError(ModelLoadError):
    """The model's chat template is broken, refuses the conversation, or exceeds a bound: a model problem."""


class Cancelled(Exception):
    """The caller's cancel flag was set while its template rendered."""


class _Overdue(Exception):
    """The rendering passed its deadline."""


def _raise(message: str):
    raise TemplateError(f"chat template error: {message}")


def _sandbox_class():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        # Intercepted, these are neither folded at compile time nor computed when their result would pass
        # the output bound: a clear error instead of a process that dies of its memory bound.
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                    and right * max(abs(left).bit_length(), 1) > 64 * RENDER_CHARS:
                raise TemplateError(f"chat template computes a number beyond the bound ({left} ** {right})")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > RENDER_CHARS:
                        raise TemplateError(f"chat template makes a value of {len(seq) * n} items, more than the bound "
                                            f"of {RENDER_CHARS >> 20} MiB")
            return super().call_binop(context, operator, left, right)

    return Sandbox


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateSyntaxError

    _Sandbox = _sandbox_class()

    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["tojson"] = lambda v, indent=None, ensure_ascii=False: json.dumps(v, indent=indent, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as e:
        raise TemplateError(f"chat template does not parse (line {e.lineno}: {e.message})") from None
    except (RecursionError, MemoryError):
        raise TemplateError("chat template does not parse (nested too deeply)") from None


def render_here(template: str, context: dict, limit: int = RENDER_CHARS) -> str:
    """Render in this process, with the output bound but no deadline: the helper process runs this."""
    from jinja2.exceptions import SecurityError
    from jinja2.exceptions import TemplateError as JinjaError

    parts: list[str] = []
    size = 0
    try:
        for piece in _compile(template).generate(**context):
            size += len(piece)
            if size > limit:
                raise TemplateError(f"chat template output passed the bound of {limit >> 20} MiB characters")
            parts.append(piece)
    except SecurityError as e:
        raise TemplateError(f"chat template tried something unsafe and was stopped ({e})") from None
    except MemoryError:
        raise TemplateError(f"chat template used more than the {WORKER_MEMORY >> 20} MiB of memory it may") from None
    except (JinjaError, TypeError, ValueError, AttributeError, OverflowError, RecursionError, LookupError, ArithmeticError) as e:
        raise TemplateError(f"chat template failed: {e}") from None
    return "".join(parts)


# --- the helper process ------------------------------------------------------------------------------------
# Messages both ways are a 4-byte big-endian length and that many bytes of JSON.


def _send(stream, obj: Any) -> None:
    data = json.dumps(obj, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def _read_exact(stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _watch_parent(parent: int) -> None:
    # A parent killed by SIGKILL cannot kill its helper: the helper notices it was orphaned and leaves,
    # even in the middle of an endless template.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def serve_forever() -> None:
    """The helper process: render requests from stdin, answers to stdout, until stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole process group: the parent decides
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    except (ImportError, ValueError, OSError):
        pass
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the protocol
    while True:
        try:
            (n,) = struct.unpack(">I", _read_exact(stdin, 4))
            request = json.loads(_read_exact(stdin, n))
        except EOFError:
            return
        try:
            reply = {"text": render_here(request["template"], request["context"], request["limit"])}
        except TemplateError as e:
            reply = {"error": str(e)}
        except MemoryError:
            reply = {"error": f"chat template used more than the {WORKER_MEMORY >> 20} MiB of memory it may"}
        _send(stdout, reply)


class _Helper:
    """The parent's handle on the helper process; one render at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            code = "from anechat.engine.template import serve_forever; serve_forever()"
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(os.getpid())], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
        return self.proc

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()

    def render(self, template: str, context: dict, limit: int, seconds: float, cancel) -> str:
        deadline = time.monotonic() + seconds
        while not self.lock.acquire(timeout=_POLL_S):  # another render runs: wait, cancellable
            if cancel is not None and cancel.is_set():
                raise Cancelled()
        try:
            deadline = time.monotonic() + seconds  # the bound is on this template's own work
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _send(proc.stdin, {"template": template, "context": context, "limit": limit})
                reply = self._receive(proc, deadline, cancel)
            except (BrokenPipeError, EOFError, OSError):
                self.kill()
                raise TemplateError(f"chat template stopped the renderer (it used more than the "
                                    f"{WORKER_MEMORY >> 20} MiB of memory it may, or crashed it)") from None
            except BaseException:  # the deadline, a cancel, Ctrl+C: the rendering must not go on
                self.kill()
                raise
            if "error" in reply:
                raise TemplateError(reply["error"])
            return reply["text"]
        finally:
            self.lock.release()

    def _receive(self, proc: subprocess.Popen, deadline: float, cancel) -> dict:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = bytearray()  # (appending to bytes would copy the whole answer once per chunk)
        need = 4
        header_done = False
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Overdue()
            ready, _, _ = select.select([fd], [], [], min(_POLL_S, left))
            if not ready:
                continue
            chunk = os.read(fd, max(need - len(buf), 1 << 16))
            if not chunk:
                raise EOFError
            buf += chunk
            if not header_done and len(buf) >= 4:
                (n,) = struct.unpack(">I", buf[:4])
                del buf[:4]
                need, header_done = n, True
            if header_done and len(buf) >= need:
                return json.loads(bytes(buf[:need]))


_helper = _Helper()


def prestart() -> None:
    """Start the helper process now rather than at the first rendering (a server: the first request would
    pay for the helper's start, a Python process importing jinja2, on cores that are decoding)."""
    with _helper.lock:
        _helper._start()


def shutdown() -> None:
    """End the helper process (tests; the helper also leaves by itself when its parent is gone)."""
    with _helper.lock:
        _helper.kill()


def render_chat_template(template: str, messages, *, add_generation_prompt: bool = True, bos_token: str = "",
                         eos_token: str = "", enable_thinking: bool | None = None, source: str = "the chat template",
                         seconds: float | None = None, limit: int | None = None, cancel=None, **extra) -> str:
    """The template's text for these messages. Raises TemplateError (naming `source` and the bound it
    passed) and Cancelled when `cancel` (a threading.Event) is set meanwhile. The bounds default to
    RENDER_SECONDS and RENDER_CHARS."""
    seconds = RENDER_SECONDS if seconds is None else seconds
    limit = RENDER_CHARS if limit is None else limit
    context = dict(messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                   eos_token=eos_token, **extra)
    if enable_thinking is not None:
        context["enable_thinking"] = enable_thinking
    try:
        return _helper.render(template, context, limit, seconds, cancel)
    except _Overdue:
        raise TemplateError(f"{source} did not finish rendering within the bound of {seconds:g} s "
                            "(it loops too long or without end); fix or replace the template") from None
    except TemplateError as e:
        text = str(e)
        raise TemplateError(f"{source}: {text}" if source != "the chat template" else text) from None

"""`anechat` without a subcommand: interactive chat on a terminal, one-shot answer when stdin is piped."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import TYPE_CHECKING

from anechat.config import Settings
from anechat.errors import UsageError

if TYPE_CHECKING:
    from anechat.engine.generate import GenerationStats
    from anechat.engine.sampling import SamplingParams
    from anechat.sessions.store import AnswerWriter, Store


def run(args: argparse.Namespace) -> int:
    # Every setting is checked before anything loads: a bad flag or file value costs no model load.
    settings = Settings.load().merged(args)
    params = sampling_params(settings)
    if args.prompt is not None or not sys.stdin.isatty():
        from anechat.signals import sigterm_as_interrupt

        with sigterm_as_interrupt():
            return run_pipe(args, settings, params)
    if args.json:
        raise UsageError("--json is for pipe mode: pipe a message in or pass -p \"...\"")
    return run_interactive(args, settings, params)


def say(line: str, stream=None) -> None:
    """Progress of a model being pulled, on stderr (stdout belongs to the answer)."""
    print(line if line.startswith(" ") else f"anechat: {line}", file=stream or sys.stderr, flush=True)


def stderr_say():
    """`say` bound to the stderr of now: the converter silences coremltools by swapping sys.stderr for a
    while, and the lines a progress ticker says from its thread meanwhile must still reach the user."""
    stream = sys.stderr
    return lambda line: say(line, stream)


def wants_plain(args: argparse.Namespace, environ=None) -> bool:
    """The line REPL instead of the full-screen UI: asked for, or a terminal that cannot host it."""
    import os

    env = os.environ if environ is None else environ
    term = env.get("TERM", "")
    return bool(args.plain) or term in ("", "dumb", "unknown") or not sys.stdout.isatty()


def run_interactive(args: argparse.Namespace, settings: Settings, params: SamplingParams) -> int:
    from anechat.chat.model import ModelProvider, model_directory
    from anechat.sessions.store import Store
    from anechat.signals import EXIT_TERMINATED, Terminated

    system = settings.system_prompt
    provider = ModelProvider(backend=args.backend, compute_units=args.compute_units, strict_fp16=args.strict_fp16)
    model_ref = settings.default_model
    if args.model_dir:
        model_ref = str(model_directory(args.model_dir))
    elif args.model:
        provider.pull_needed(model_ref)  # an unknown name or missing directory fails here, before any UI
    ref = args.resume or (args.session if args.session not in (None, "new") else None)
    given = bool(args.model or args.model_dir)  # a resumed session's own model gives way to one named here
    plain = wants_plain(args)
    warnings: list[str] = []
    store = Store.open_for_chat(notify=warnings.append if not plain else None)
    try:
        if ref:
            store.session(store.resolve(ref))  # a bad id is a usage error, not a notification
        if plain:
            from anechat.repl import run_repl

            return run_repl(provider=provider, store=store, model_ref=model_ref, params=params, system=system,
                            think=args.think, resume=ref, chosen=settings.sampling(), model_given=given)
        from anechat.tui.app import AnechatApp

        app = AnechatApp(provider=provider, store=store, model_ref=model_ref, params=params, system=system,
                         think=args.think, resume=ref, theme=settings.theme, warnings=warnings,
                         chosen=settings.sampling(), model_given=given)
        app.run()
        if app.return_code == EXIT_TERMINATED:  # SIGTERM (see AnechatApp._on_sigterm): said once the screen is back
            raise Terminated()
        return app.return_code or 0
    finally:
        store.close()


# Beyond any context anechat runs (32k tokens of ordinary text); a larger stdin is refused after reading this
# much, so memory and time stay bounded. The engine refuses, untokenized, what exceeds the loaded model's context.
MAX_MESSAGE_BYTES = 1 << 20


def read_message(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        text = args.prompt
    else:
        raw = sys.stdin.buffer.read(MAX_MESSAGE_BYTES + 1)
        if len(raw) > MAX_MESSAGE_BYTES:
            raise UsageError(f"stdin holds more than {MAX_MESSAGE_BYTES >> 20} MiB, more than a model's context can take; send less")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"stdin is not valid UTF-8 (byte {e.start}); convert it first, e.g. with iconv") from None
    text = text.strip()
    if not text:
        raise UsageError("empty message: pipe a question in, e.g. echo \"What is 2+2?\" | anechat")
    return text


def sampling_params(settings: Settings) -> SamplingParams:
    """The schema's defaults under the settings (file, then flags: see Settings.merged)."""
    from anechat.engine.sampling import SamplingParams

    params = SamplingParams().merged(**settings.sampling())
    params.validate()
    return params


def open_session(ref: str, model: str, system: str | None, params: SamplingParams):
    """(store, session id, earlier messages) for --session ID|new."""
    from dataclasses import asdict

    from anechat.sessions.store import Store

    store = Store.open_for_chat()
    if ref == "new":
        return store, store.create_session(model, system, asdict(params)), []
    sid = store.resolve(ref)
    return store, sid, store.chat_messages(sid)


def run_pipe(args: argparse.Namespace, settings: Settings, params: SamplingParams) -> int:
    import asyncio

    from anechat.chat.model import ModelProvider, model_directory
    from anechat.chat.present import stats_line
    from anechat.engine.generate import DoneEvent, Engine
    from anechat.engine.loader import load_model
    from anechat.engine.sampling import SamplingParams
    from anechat.progress import Ticker
    from anechat.signals import held, interrupt
    from anechat.textsafe import json_safe, neutralize

    message = read_message(args)
    system = settings.system_prompt
    say = stderr_say()
    path = model_directory(args.model_dir) if args.model_dir else ModelProvider().resolve(settings.default_model, say)
    with Ticker(say) as ticker:
        # Seconds on the portable runtime (said only when it takes longer), a first Core ML compile minutes.
        ticker.step(f"loading {path.name}", quiet=True)
        loaded = load_model(path, backend=args.backend, compute_units=args.compute_units, strict_fp16=args.strict_fp16)
    # The model's recommended sampling, under the settings file and the flags.
    params = SamplingParams().merged(**loaded.generation).merged(**settings.sampling())
    params.validate()
    history: list[dict] = []
    store: Store | None = None
    writer: AnswerWriter | None = None
    ref = args.session or args.resume
    if ref:
        store, session_id, history = open_session(ref, loaded.name, system, params)
        if ref == "new":
            say(f"saved as session {session_id} (--session {session_id} continues it)")
        store.add_user_message(session_id, message)  # committed before generation starts
        writer = store.begin_answer(session_id, loaded.name)
    if not history and system:
        history = [{"role": "system", "content": system}]
    messages = history + [{"role": "user", "content": message}]
    engine = Engine(loaded.lm, loaded.tokenizer, params)
    out = sys.stdout
    clean = neutralize if out.isatty() else (lambda s: s)
    parts: list[str] = []
    done: DoneEvent | None = None

    async def stream() -> None:
        nonlocal done
        with Ticker(say) as ticker:
            # A long history (--session) can take a while to read; said only when it does.
            ticker.step(f"reading the conversation ({len(messages)} message{'' if len(messages) == 1 else 's'})", quiet=True)
            async for event in engine.chat(messages, params, enable_thinking=args.think):
                ticker.clear()
                handle(event)

    def handle(event) -> None:
        nonlocal done
        if isinstance(event, DoneEvent):
            done = event
            return
        with held():  # shown and saved together, or neither: a signal waits for both
            parts.append(event.text)
            if writer is not None:
                writer.append(event.text)
            if not args.json:
                out.write(clean(event.text))
                out.flush()

    # Ctrl+C through our handler rather than asyncio's (which cancels the task and waits for it): the answer
    # so far is flushed and saved below, and the step under way is not waited for (signals.leaving).
    previous = signal.signal(signal.SIGINT, interrupt) if signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
    try:
        asyncio.run(stream())
    except KeyboardInterrupt:
        if not args.json:
            out.write("\n")
            out.flush()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if store is not None and writer is not None:
            stats_record = _stats_dict(done.stats) if done else None
            writer.finish(stats_record, cut_short=done is None or done.finish_reason == "cancelled")
            store.close()
    answer = "".join(parts)
    stats = done.stats if done else None
    if args.json:
        record = {
            "model": loaded.name,
            "backend": loaded.backend.name,
            "answer": answer,
            "finish_reason": done.finish_reason if done else None,
            "stats": _stats_dict(stats),
        }
        out.write(json_safe(json.dumps(record, ensure_ascii=False)) + "\n")
    else:
        if not answer.endswith("\n"):
            out.write("\n")
    out.flush()
    if args.verbose and done is not None:
        print(stats_line(done.stats, done.finish_reason), file=sys.stderr)
    return 0


def _stats_dict(stats: GenerationStats | None) -> dict | None:
    from dataclasses import asdict

    return None if stats is None else asdict(stats)

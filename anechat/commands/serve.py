"""`anechat serve`: the command line — where to listen, who may connect, which model — then uvicorn."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import socket
import sys

from anechat.errors import CannotListen, UsageError

log = logging.getLogger("anechat.serve")




def add_parser(sub) -> None:
    from anechat.cli import add_model_arguments, add_sampling_arguments

    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server (chat/completions, completions, models; streaming)",
        description="Serve a model over OpenAI's HTTP API on this machine. Point any OpenAI client at "
        "http://HOST:PORT/v1. Exit codes: 0 stopped, 2 bad arguments (host, port, a public address without "
        "an API key), 3 model not found, 4 model failed to load, 5 cannot listen (port in use, no permission).",
    )
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    p.add_argument("--api-key", default=os.environ.get("ANECHAT_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $ANECHAT_API_KEY)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="listen on an address other machines can reach without an API key")
    p.add_argument("--slots", type=int, default=4,
                   help="conversations generated side by side, each keeping its prompt cache (default 4)")
    p.add_argument("--log-level", choices=("debug", "info", "warning"), default="info",
                   help="request log and model loads are at info (default)")
    add_sampling_arguments(p)
    p.set_defaults(func=run)


def listen_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple, bool]:
    """(family, sockaddr, loopback?) for --host; bad values are usage errors."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port (0-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise UsageError(f"--host {host!r} is not an address or a name this machine can resolve ({e})") from None
    family, _, _, _, sockaddr = infos[0]
    loopback = all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)
    return family, sockaddr, loopback


def bind(family, sockaddr, host: str, port: int) -> socket.socket:
    # IPPROTO_TCP named: asyncio turns Nagle's algorithm off only on sockets that say they are TCP, and with
    # it on, a response written as headers then body waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
    except OSError as e:
        sock.close()
        why = {
            errno.EADDRINUSE: "the port is in use (another server is running there? pick another --port)",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: f"{host} is not an address of this machine",
        }.get(e.errno or 0, e.strerror or str(e))
        if e.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"cannot listen on {host}:{port}: {why}") from None
        raise CannotListen(f"cannot listen on {host}:{port}: {why}") from None
    return sock


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    for name in ("anechat.serve", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper() if name == "anechat.serve" else max(logging.WARNING, logging.getLevelName(level.upper())))
        logger.propagate = False  # anechat's own stderr handler would print the warnings twice


def run(args: argparse.Namespace) -> int:
    from anechat.commands.chat import sampling_params
    from anechat.config import Settings

    if args.slots < 1:
        raise UsageError("--slots must be at least 1")
    family, sockaddr, loopback = listen_address(args.host, args.port)
    if not loopback and not args.api_key and not args.allow_unauthenticated:
        raise UsageError(f"refusing to serve on {args.host} without an API key: anyone who can reach it could use it. "
                         "Pass --api-key KEY (or set ANECHAT_API_KEY), or --allow-unauthenticated")
    settings = Settings.load().merged(args)
    defaults = sampling_params(settings)  # pipe mode's defaults: settings file, then flags
    setup_logging(args.log_level)
    sock = bind(family, sockaddr, args.host, args.port)  # before the model loads: a busy port fails at once
    try:
        return _serve(args, sock, settings, defaults, loopback)
    finally:
        sock.close()


def _serve(args, sock: socket.socket, settings, defaults, loopback: bool) -> int:
    import threading

    import uvicorn

    from anechat import signals
    from anechat.chat.model import ModelProvider, model_directory
    from anechat.commands.chat import stderr_say
    from anechat.engine import template
    from anechat.engine.loader import load_model
    from anechat.serve.app import build_app
    from anechat.serve.scheduler import ModelHost
    from anechat.signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt

    path = model_directory(args.model_dir) if args.model_dir else ModelProvider().resolve(settings.default_model, stderr_say())

    def load(p):
        return load_model(p, backend=args.backend, compute_units=args.compute_units, strict_fp16=args.strict_fp16)

    with sigterm_as_interrupt():  # until uvicorn owns the signals, SIGTERM ends the load as Ctrl+C does
        template.prestart()
        startup = load(path)
        _ = startup.tokenizer.max_token_bytes  # a walk over the vocabulary: now, not on the event loop (bounds())

    def installed():
        from anechat.models import store

        return {name: m.path for name, m in store.installed().items()}

    system = args.system if args.system is not None else settings.system_prompt
    host = ModelHost(load=load, startup=startup, startup_path=path, defaults=defaults, slots=args.slots,
                     user_sampling=settings.sampling(),
                     think=args.think, installed=installed, system=system)
    app = build_app(host, args.api_key)
    sock.listen(128)
    address, port = sock.getsockname()[:2]
    shown = f"[{address}]" if ":" in address else address
    if not loopback and not args.api_key:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model", args.host)
    from anechat.runtime.select import backend_label

    print(f"anechat: serving {startup.name} ({backend_label(startup.backend)}, context {startup.lm.context_length}) "
          f"at http://{shown}:{port}/v1 — Ctrl+C stops", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # Stopping: uvicorn stops accepting and waits for the open requests; they end at their next check
            # (template, prefill block, token) instead of running to their end. From a thread: a signal
            # handler must not take a lock the interrupted code may hold.
            threading.Thread(target=host.cancel_all, daemon=True).start()
            signals.stopping = True
            super().handle_exit(sig, frame)

    server = Server(config)
    code = 0
    try:
        with sigterm_as_interrupt():  # uvicorn re-raises the signal it stopped for once it has shut down
            server.run(sockets=[sock])
    except Terminated:
        code = EXIT_TERMINATED
    except KeyboardInterrupt:
        pass  # uvicorn has shut down gracefully and re-raises the signal: stopping a server is not an error
    finally:
        host.close()
    log.info("stopped")
    return code

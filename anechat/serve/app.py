"""The HTTP side: Starlette routes over a ModelHost, OpenAI's endpoints, SSE streaming, the API key and
the request log."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from anechat import signals
from anechat.engine.generate import DoneEvent, TokenEvent
from anechat.engine.heap import collector_paused
from anechat.serve import protocol as P
from anechat.serve.scheduler import Channel, Job, ModelHost, Started

log = logging.getLogger("anechat.serve")


def error_response(e: P.ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


class Api:
    def __init__(self, host: ModelHost, api_key: str | None) -> None:
        self.host = host
        self.api_key = api_key

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth:
            raise P.ApiError(401, "Missing API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise P.ApiError(401, "Incorrect API key provided", code="invalid_api_key")

    async def health(self, request: Request) -> Response:
        return JSONResponse(self.host.status())

    def _model_object(self, name: str) -> dict:
        cur = self.host.current
        return {"id": name, "object": "model", "created": 0, "owned_by": "anechat",
                "loaded": bool(cur and cur.name == name)}

    async def models(self, request: Request) -> Response:
        self.check_key(request)
        return JSONResponse({"object": "list", "data": [self._model_object(n) for n in self.host.models()]})

    async def model(self, request: Request) -> Response:
        self.check_key(request)
        name = self.host.resolve(request.path_params["name"])
        return JSONResponse(self._model_object(name))

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, P.parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, P.parse_completion)

    async def _generate(self, request: Request, parse) -> Response:
        try:
            return await self._answer(request, parse)
        except asyncio.CancelledError:
            if not signals.stopping:
                raise
            # uvicorn's graceful shutdown ran out while the model was in a step that cannot be interrupted (a
            # first-run kernel compile): it cancels the request, and a cancellation escaping the app is logged
            # as a crash with a traceback. The server is stopping: the request ends with a plain 503.
            return error_response(P.ApiError(503, "the server is stopping", code="server_stopping"))

    async def _answer(self, request: Request, parse) -> Response:
        self.check_key(request)
        raw = await read_body(request)
        # Parsing a body of megabytes takes the loop for tens of milliseconds: /health must not wait for it.
        req = await asyncio.to_thread(_parse, parse, raw)
        model = self.host.resolve(req.model)
        bounds = self.host.bounds(model)
        if bounds is not None:  # (measuring megabytes of text: off the loop too)
            await asyncio.to_thread(P.check_fits, req, *bounds)
        params = req.params(self.host.defaults_for(model))
        job = Job(req, params, model, Channel(asyncio.get_running_loop()))
        self.host.submit(job)
        # Until a streaming response starts nothing else reads this request's receive channel: a client that
        # leaves while its request waits in the queue, or while a non-streamed answer is made, is noticed here.
        watcher = asyncio.create_task(self._watch(request, job))
        try:
            items = await job.channel.get()
            if isinstance(items[0], P.ApiError):
                raise items[0]
        except BaseException:
            watcher.cancel()
            self.host.withdraw(job)
            raise
        started: Started = items[0]
        batches = self._batches(job, items[1:], watcher)
        answer = Answer(req, P.new_id(req.kind), started, request.state)
        if req.stream:
            return StreamingResponse(answer.sse(batches), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await answer.whole(batches))

    async def _watch(self, request: Request, job: Job) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.host.withdraw(job)
        # Whatever phase the job was in (queued, rendering, prefilling), its handler stops waiting for it.
        job.channel.put(P.ApiError(499, "the client closed the request", code="client_closed_request"))

    async def _batches(self, job: Job, first: list, watcher: asyncio.Task) -> AsyncIterator[list]:
        """The job's events, in the batches they arrive in, up to its DoneEvent; a consumer that stops early
        (the client went away) cancels the generation."""
        try:
            batch = first
            while True:
                for item in batch:
                    if isinstance(item, P.ApiError):
                        raise item
                if batch:
                    yield batch
                if any(isinstance(item, DoneEvent) for item in batch):
                    return
                batch = await job.channel.get()
        finally:
            watcher.cancel()
            self.host.withdraw(job)  # a no-op once the job is done


class Answer:
    """One generation's response: a whole JSON object, or the SSE chunks of one; notes its statistics
    for the request log."""

    def __init__(self, req: P.GenerationRequest, rid: str, started: Started, state) -> None:
        self.req, self.rid, self.started, self.state = req, rid, started, state
        state.log_note = "the client went away before the answer was complete"

    def _done(self, done: DoneEvent) -> dict:
        s = done.stats
        self.state.log_note = (f"{self.started.model}: prompt {s.prompt_tokens} tok ({s.reused_tokens} cached), "
                               f"{s.decode_tokens} generated, TTFT {s.ttft_s * 1000:.0f} ms, {s.decode_tok_s:.1f} tok/s, "
                               f"{done.finish_reason}")
        return P.usage(s.prompt_tokens, s.decode_tokens, s.reused_tokens)

    async def whole(self, batches) -> dict:
        parts: list[str] = []
        async for batch in batches:
            for event in batch:
                if isinstance(event, DoneEvent):
                    use = self._done(event)
                    return P.completion_object(self.req, self.rid, self.started.model, "".join(parts), _finish(event), use)
                parts.append(event.text)
        raise P.ApiError(500, "the generation ended without a result", kind="server_error")

    async def sse(self, batches) -> AsyncIterator[bytes]:
        req, rid, model = self.req, self.rid, self.started.model
        if req.kind == "chat":
            yield P.sse(P.chunk_object(req, rid, model, None, None, first=True))
        try:
            async for batch in batches:
                # Text that arrived together goes out as one chunk: one write instead of several.
                text = "".join(e.text for e in batch if isinstance(e, TokenEvent))
                if text:
                    yield P.sse(P.chunk_object(req, rid, model, text, None))
                done = next((e for e in batch if isinstance(e, DoneEvent)), None)
                if done is not None:
                    use = self._done(done)
                    yield P.sse(P.chunk_object(req, rid, model, None, _finish(done)))
                    if req.include_usage:
                        yield P.sse(P.usage_chunk(req, rid, model, use))
                    break
        except P.ApiError as e:  # the headers are gone: the error goes into the stream, as OpenAI's does
            self.state.log_note = f"failed: {e.message}"
            yield P.sse(e.body())
        yield P.sse("[DONE]")


def _parse(parse, raw: bytes) -> P.GenerationRequest:
    with collector_paused():
        return parse(P.parse_json(raw))


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 past MAX_BODY_BYTES: at once when Content-Length says so, else as soon as
    that much has arrived (the rest is never read, nor kept in memory)."""
    limit = P.MAX_BODY_BYTES
    too_large = P.ApiError(413, f"the request body is larger than {limit >> 20} MiB", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _finish(done: DoneEvent) -> str:
    return "length" if done.finish_reason == "length" else "stop"


class RequestLog:
    """ASGI middleware: one info line per request (client, method, path, status, time, and what the handler
    noted, e.g. a generation's token counts)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        status = 0

        async def send_noting_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        scope.setdefault("state", {})
        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            client = scope.get("client") or ("-", 0)
            note = scope["state"].get("log_note")
            log.info("%s:%s %s %s %s %.0f ms%s", client[0], client[1], scope["method"], scope["path"], status or "-",
                     (time.perf_counter() - t) * 1000, f" · {note}" if note else "")


def build_app(host: ModelHost, api_key: str | None = None) -> Starlette:
    api = Api(host, api_key)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, P.ApiError)
        request.state.log_note = exc.message
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = {404: f"Unknown endpoint {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(P.ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)), code=code))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error")
        return error_response(P.ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))

    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{name:path}", api.model, methods=["GET"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={P.ApiError: api_error, HTTPException: http_error,
                                                      Exception: server_error})
    app.add_middleware(RequestLog)
    return app

"""Hostile requests to `anechat serve` (issue 28), against a real server process: cheap bounds refuse what
cannot be served before any expensive step (413 for a body over the limit without reading it, 400 for
nesting, too many values or messages), every reply to garbage is a well-formed OpenAI error with the right
status and never a 500 (hypothesis over request bodies), the server answers afterwards, a client that
leaves cancels its request even while the template renders, and SIGTERM ends the server with requests in
flight."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import Server
from test_bad_inputs_templates import SLOW_ON_DEMAND
from tiny import tiny_chat_checkpoint

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny model (context 64) whose template never ends when the last message is "slow"."""
    from anechat.convert.build import ConvertOptions, convert

    out = tmp_path_factory.mktemp("hostile-serve") / "tiny"
    convert(tiny_chat_checkpoint("llama", num_layers=1), out, ConvertOptions(context=64, batch=4))
    (out / "chat_template.jinja").write_text(SLOW_ON_DEMAND)
    return out


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    s = Server(model, tmp_path_factory.mktemp("hostile-home"), "--slots", "2", "--max-tokens", "3")
    yield s
    assert s.stop() == 0


def post(server, path: str, body: bytes, **kw) -> httpx.Response:
    return httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=120, **kw)


def assert_openai_error(r: httpx.Response, statuses=(400, 404, 413)) -> dict:
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"], err
    assert err["type"] == "invalid_request_error", err
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    assert "internal error" not in err["message"]
    return err


def answers(server) -> None:
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"
    r = post(server, CHAT, json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode())
    assert r.status_code == 200, r.text


def test_cheap_bounds_refuse_before_any_expensive_step(server):
    r = post(server, CHAT, json.dumps({"messages": [{"role": "user", "content": "a"}] * 100_000}).encode())
    err = assert_openai_error(r, (400,))
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages" and "100000 messages" in err["message"]
    for body in (b"[" * 100_000, b'{"messages": ' + b"[" * 70 + b"]" * 70 + b"}", b"{" * 5000):
        r = post(server, CHAT, body)
        err = assert_openai_error(r, (400,))
        assert "nests deeper than 64" in err["message"] or "not valid JSON" in err["message"], err
    assert assert_openai_error(post(server, CHAT, b"[" + b"[],[]," * ((8 << 20) // 6 - 1) + b"[]]"), (400,))["code"] == "too_many_values"
    big = b"x" * ((8 << 20) + 1)
    assert assert_openai_error(post(server, CHAT, big), (413,))["code"] == "request_too_large"

    def chunks():  # no Content-Length: refused once the limit has arrived, the rest never read
        for _ in range(64):
            yield b" " * (1 << 20)

    assert assert_openai_error(post(server, COMPLETIONS, chunks()), (413,))["code"] == "request_too_large"
    # a message too long for the context, and the already-solid cases
    r = post(server, CHAT, json.dumps({"messages": [{"role": "user", "content": "word " * 200_000}]}).encode())
    assert assert_openai_error(r, (400,))["code"] == "context_length_exceeded"
    for prompt in ("word " * 200_000, list(range(5, 69))):  # as text (refused untokenized) and as ids
        err = assert_openai_error(post(server, COMPLETIONS, json.dumps({"prompt": prompt}).encode()), (400,))
        assert err["code"] == "context_length_exceeded" and err["param"] == "prompt", err
        assert ("1000000 bytes" if isinstance(prompt, str) else "64 tokens") in err["message"], err
    assert_openai_error(post(server, CHAT, b'{"messages": [{"role": "user", "content": "\xff"}]}'), (400,))
    r = post(server, CHAT, json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 2}).encode())
    assert assert_openai_error(r, (400,))["param"] == "n"
    answers(server)


def test_the_bounds_hold_for_a_model_loaded_on_demand(model, tmp_path, monkeypatch):
    """A request for an installed model that is not loaded yet is checked once it is."""
    from anechat.models import store

    monkeypatch.setenv("ANECHAT_HOME", str(tmp_path))
    store.add(model, "other")
    s = Server(model, tmp_path, "--max-tokens", "3")
    try:
        r = post(s, CHAT, json.dumps({"model": "other", "messages": [{"role": "user", "content": "a"}] * 100_000}).encode())
        err = assert_openai_error(r, (400,))
        assert err["code"] == "context_length_exceeded" and "100000 messages" in err["message"], err
        s.wait_log("loading other")  # refused by the worker, once the model was there to say its context
        r = post(s, COMPLETIONS, json.dumps({"model": "other", "prompt": "word " * 200_000}).encode())
        assert assert_openai_error(r, (400,))["code"] == "context_length_exceeded"
        answers(s)
    finally:
        assert s.stop() == 0


# --- hypothesis over request bodies -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
anything = json_values | st.sampled_from([math.nan, math.inf, -math.inf, "", [], {}, 0, -1, 10**30])
roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "bot", "", "USER"]) | json_values
contents = st.text(max_size=40) | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                                  "text": st.text(max_size=10) | anything}), max_size=3) | anything
messages = st.lists(st.fixed_dictionaries({}, optional={"role": roles, "content": contents, "name": anything}), max_size=4) | anything
common = {
    "model": st.sampled_from(["tiny", "nope", ""]) | anything,
    "temperature": st.floats(-1, 3) | anything,
    "top_p": st.floats(-1, 2) | anything,
    "top_k": st.integers(-3, 100) | anything,
    "min_p": anything, "repeat_penalty": anything,
    "seed": st.integers(-(2**70), 2**70) | anything,
    "stop": st.lists(st.text(max_size=3), max_size=6) | anything,
    "stream": st.booleans() | anything,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | anything}) | anything,
    "n": st.integers(-1, 3) | anything, "logprobs": anything, "logit_bias": anything, "tools": anything,
    "response_format": anything, "cache_prompt": st.booleans() | anything, "enable_thinking": anything,
    "chat_template_kwargs": anything, "max_completion_tokens": st.integers(-2, 3) | anything,
}
# max_tokens is always there and small when it is a valid number: the suite tests the checks, not generation
chat_bodies = st.fixed_dictionaries({"messages": messages, "max_tokens": st.integers(-2, 3) | anything}, optional=common)
completion_bodies = st.fixed_dictionaries(
    {"prompt": st.text(max_size=30) | st.lists(st.integers(-5, 10**6), max_size=5) | anything,
     "max_tokens": st.integers(-2, 3) | anything}, optional=common)


def _small_tokens(body) -> None:
    """A valid integer max_tokens stays small (the generation is not what is tested)."""
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and not isinstance(body.get(key), bool) and body[key] > 3:
            body[key] = 3


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from([CHAT, COMPLETIONS]), body=chat_bodies | completion_bodies | st.binary(max_size=60) | json_values)
def test_any_body_gets_a_well_formed_reply_never_a_500(server, path, body):
    if isinstance(body, dict):
        _small_tokens(body)
    raw = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    r = post(server, path, raw)
    if r.status_code == 200:
        if r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.rstrip().endswith("data: [DONE]"), r.text
        else:
            assert r.json()["object"] in ("chat.completion", "text_completion")
        return
    assert_openai_error(r)


def test_the_server_still_answers_after_the_fuzzing(server):
    answers(server)


# --- templates, disconnects, signals ----------------------------------------------------------------------


def test_a_template_past_its_bound_is_a_400_naming_it(server, model):
    r = post(server, CHAT, json.dumps({"messages": [{"role": "user", "content": "slow"}]}).encode())
    err = assert_openai_error(r, (400,))
    assert str(model / "chat_template.jinja") in err["message"] and "within the bound of 10 s" in err["message"], err
    answers(server)


def test_a_template_that_writes_more_than_the_context_is_a_400_naming_it(server, model):
    r = post(server, CHAT, json.dumps({"messages": [{"role": "user", "content": "huge"}]}).encode())
    err = assert_openai_error(r, (400,))
    assert str(model / "chat_template.jinja") in err["message"] and "longer than the model's context" in err["message"], err
    answers(server)


def test_a_client_that_leaves_cancels_its_rendering(server):
    seen = len(server.lines)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while the template renders
        httpx.post(server.url + CHAT, json={"messages": [{"role": "user", "content": "slow"}]}, timeout=1.5)
    line = server.wait_log(r"POST /v1/chat/completions 499", timeout=60)
    assert "cancelled" in line or "closed" in line, line
    answers(server)
    assert not any("did not finish rendering" in x for x in server.lines[seen:])  # stopped, not run to its bound


def _stream_forever(server, started: threading.Event, body: dict) -> None:
    try:
        with httpx.stream("POST", server.url + CHAT, json=body, timeout=120) as r:
            for _ in r.iter_lines():
                started.set()
    except httpx.HTTPError:
        pass
    finally:
        started.set()


@pytest.mark.parametrize("phase", ["decoding", "rendering"])
def test_sigterm_with_a_request_in_flight_ends_the_server(model, tmp_path, phase):
    s = Server(model, tmp_path, "--slots", "1")
    started = threading.Event()
    body = ({"messages": [{"role": "user", "content": "tell me a story"}], "max_tokens": 1_000_000, "stream": True}
            if phase == "decoding" else {"messages": [{"role": "user", "content": "slow"}], "stream": True})
    client = threading.Thread(target=_stream_forever, args=(s, started, body), daemon=True)
    client.start()
    if phase == "decoding":
        assert started.wait(60)
    else:
        end = time.monotonic() + 60
        while httpx.get(s.url + "/health").json()["queued"] and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)  # the worker is rendering
    os.kill(s.proc.pid, signal.SIGTERM)
    code = s.proc.wait(timeout=30)  # generous: the goal is 2 s
    assert code == 128 + signal.SIGTERM, "".join(s.lines)
    s.wait_log("stopped")
    assert not any("Traceback" in x for x in s.lines), "".join(s.lines)
    client.join(30)

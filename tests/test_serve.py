"""`anechat serve`: a real server process on 127.0.0.1 (ephemeral port) with tiny random-weight models, driven
by the real `openai` client and by raw HTTP."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import Server

from anechat.engine.generate import DoneEvent, Engine
from anechat.engine.loader import load_model
from anechat.engine.sampling import SamplingParams
from anechat.serve.scheduler import Slot, pick_slot


@pytest.fixture(scope="module")
def tiny256(tmp_path_factory) -> Path:
    """The tiny llama with room for a few turns of conversation."""
    from tiny import tiny_chat_checkpoint

    from anechat.convert.build import ConvertOptions, convert

    out = tmp_path_factory.mktemp("serve-model") / "tiny256"
    convert(tiny_chat_checkpoint("llama"), out, ConvertOptions(context=256, batch=8))
    return out


@pytest.fixture(scope="module")
def server(tiny256, tiny_model_dirs, tmp_path_factory):
    """Two slots; a second model ("other") installed in its data dir."""
    home = tmp_path_factory.mktemp("serve-home")
    env = {**os.environ, "ANECHAT_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "anechat", "models", "add", str(tiny_model_dirs["qwen2"]), "--name", "other"],
                   env=env, check=True, capture_output=True)
    s = Server(tiny256, home, "--slots", "2")
    yield s
    assert s.stop() == 0
    s.wait_log("stopped")


@pytest.fixture(scope="module")
def keyed(tiny256, tmp_path_factory):
    s = Server(tiny256, tmp_path_factory.mktemp("serve-key"), "--api-key", "s3cret", "--slots", "1")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def engine(tiny256):
    loaded = load_model(tiny256, backend="portable")
    return Engine(loaded.lm, loaded.tokenizer)


def in_process(engine: Engine, messages, **params) -> tuple[str, DoneEvent]:
    """What pipe mode answers to the same messages with the same settings."""
    engine.lm.reset()
    events = list(engine.generate(messages, SamplingParams().merged(**params)))
    done = events[-1]
    return "".join(e.text for e in events[:-1]), done


HI = [{"role": "user", "content": "Paris is the capital of"}]


def test_chat_matches_pipe_mode_streaming_and_not(server, engine):
    name = server.tiny_name = server.client().models.list().data[0].id
    expected, done = in_process(engine, HI, temperature=0.8, seed=5, max_tokens=12)
    r = server.client().chat.completions.create(model=name, messages=HI, temperature=0.8, seed=5, max_tokens=12)
    assert r.object == "chat.completion" and r.model == name
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == ("length" if done.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == done.stats.prompt_tokens
    assert r.usage.completion_tokens == done.stats.decode_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    chunks = list(server.client().chat.completions.create(model=name, messages=HI, temperature=0.8, seed=5, max_tokens=12,
                                                           stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [r.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_completions_streaming_and_not(server, engine):
    c = server.client()
    r = c.completions.create(model=c.models.list().data[0].id, prompt="The quick brown",
                             max_tokens=10, temperature=0)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    ids = engine.tokenizer.encode("The quick brown")
    assert r.usage.prompt_tokens == len(ids)
    engine.lm.reset()
    events = list(engine.generate_ids(ids, SamplingParams(temperature=0, max_tokens=10)))
    assert r.choices[0].text == "".join(e.text for e in events[:-1])
    streamed = list(c.completions.create(model=r.model, prompt=ids, max_tokens=10, temperature=0, stream=True))
    assert "".join(x.choices[0].text for x in streamed) == r.choices[0].text
    assert streamed[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_seed_stop_and_defaults(server):
    c = server.client()
    model = c.models.list().data[0].id
    ask = {"model": model, "messages": HI, "temperature": 1.0, "top_p": 0.9, "max_tokens": 16}
    a = c.chat.completions.create(seed=7, **ask).choices[0].message.content
    assert c.chat.completions.create(seed=7, **ask).choices[0].message.content == a
    greedy = c.chat.completions.create(model=model, messages=HI, temperature=0, max_tokens=16).choices[0]
    text = greedy.message.content
    assert len(text) > 4
    stop = text[2:4]
    cut = c.chat.completions.create(model=model, messages=HI, temperature=0, max_tokens=16, stop=[stop, "never"]).choices[0]
    assert cut.message.content == text[: text.index(stop)]
    assert cut.finish_reason == "stop"


def test_models_and_health(server):
    ids = [m.id for m in server.client().models.list().data]
    assert "other" in ids and len(ids) == 2
    assert server.client().models.retrieve("other").id == "other"
    h = server.health()
    assert h["status"] == "ok" and h["slots"] == 2


def raw(server, path: str, body, headers=None, method="POST") -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.request(method, server.url + path, content=data, headers={"Content-Type": "application/json", **(headers or {})})


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"]
    assert err["type"] in ("invalid_request_error", "server_error")
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


CHAT = "/v1/chat/completions"


def test_bad_requests_get_openai_errors(server):
    assert "JSON" in assert_error(raw(server, CHAT, b"{not json"), 400)["message"]
    assert_error(raw(server, CHAT, b"[1, 2]"), 400)
    assert_error(raw(server, CHAT, {"messages": "hi"}), 400, "messages", "invalid_type")
    assert_error(raw(server, CHAT, {"messages": []}), 400, "messages")
    assert_error(raw(server, CHAT, {"messages": [{"role": "robot", "content": "x"}]}), 400, "messages[0].role")
    assert_error(raw(server, CHAT, {"messages": [{"role": "user", "content": 5}]}), 400, "messages[0].content", "invalid_type")
    assert_error(raw(server, CHAT, {"messages": HI, "temperature": "hot"}), 400, "temperature", "invalid_type")
    assert_error(raw(server, CHAT, {"messages": HI, "temperature": 3}), 400, "temperature")
    assert_error(raw(server, CHAT, {"messages": HI, "max_tokens": 0}), 400, "max_tokens")
    assert_error(raw(server, CHAT, {"messages": HI, "max_tokens": 2.5}), 400, "max_tokens", "invalid_type")
    assert_error(raw(server, CHAT, {"messages": HI, "stream": "yes"}), 400, "stream", "invalid_type")
    assert_error(raw(server, CHAT, {"messages": HI, "stop": [1]}), 400, "stop", "invalid_type")
    assert_error(raw(server, CHAT, {"messages": HI, "n": 2}), 400, "n", "unsupported_parameter")
    assert_error(raw(server, CHAT, {"messages": HI, "n": 0}), 400, "n")
    assert_error(raw(server, CHAT, {"messages": HI, "logprobs": True}), 400, "logprobs", "unsupported_parameter")
    assert_error(raw(server, CHAT, {"messages": HI, "model": 3}), 400, "model", "invalid_type")
    assert_error(raw(server, "/v1/completions", {"prompt": 12}), 400, "prompt", "invalid_type")
    assert_error(raw(server, "/v1/completions", {"prompt": [1, 100000]}), 400, "prompt")
    assert_error(raw(server, "/v1/nothing", {}), 404, code="not_found")
    assert_error(raw(server, CHAT, None, method="GET"), 405)
    # the server is still fine
    assert raw(server, CHAT, {"messages": HI, "max_tokens": 2}).status_code == 200


def test_unknown_model_and_prompt_over_context(server):
    assert_error(raw(server, CHAT, {"model": "no-such-model", "messages": HI}), 404, "model", "model_not_found")
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="no-such-model", messages=HI)
    long = "The quick brown fox jumps over the lazy dog. " * 80  # far more than the context of 256 tokens
    assert_error(raw(server, CHAT, {"messages": [{"role": "user", "content": long}]}), 400, "messages", "context_length_exceeded")
    assert_error(raw(server, "/v1/completions", {"prompt": long}), 400, "prompt", "context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model=server.client().models.list().data[0].id, prompt=long, stream=True)
    assert e.value.code == "context_length_exceeded"


def test_api_key(keyed):
    assert_error(raw(keyed, CHAT, {"messages": HI}), 401, code="invalid_api_key")
    assert_error(raw(keyed, CHAT, {"messages": HI}, {"Authorization": "Bearer wrong"}), 401, code="invalid_api_key")
    assert_error(raw(keyed, "/v1/models", None, {"Authorization": "Bearer wrong"}, method="GET"), 401)
    with pytest.raises(openai.AuthenticationError):
        keyed.client("wrong").chat.completions.create(model="x", messages=HI)
    model = keyed.client("s3cret").models.list().data[0].id
    assert keyed.client("s3cret").chat.completions.create(model=model, messages=HI, max_tokens=3).choices
    assert keyed.health()["status"] == "ok"  # /health needs no key


# Random weights reach an end-of-turn within a few hundred tokens on most prompts; greedy on this one runs long,
# so a generation that stops early was stopped by the disconnect.
LONG = [{"role": "user", "content": "story 19"}]


@pytest.fixture(scope="module")
def long_answer(engine) -> int:
    _, done = in_process(engine, LONG, temperature=0, max_tokens=100000)
    assert done.stats.decode_tokens >= 1000, "pick another prompt: this one no longer runs long"
    return done.stats.decode_tokens


def cancelled_after(server) -> int:
    line = server.wait_log(r"generation cancelled", timeout=10)
    server.lines.remove(line)
    return int(re.search(r"after (\d+) generated", line).group(1))


def test_client_disconnect_stops_generation(server, long_answer):
    body = {"messages": LONG, "stream": True, "max_tokens": 100000, "temperature": 0}
    with httpx.stream("POST", server.url + CHAT, json=body, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():  # until the answer has begun
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
    # The connection is closed: the generation stops at once, long before its natural end, and frees its slot.
    assert 0 < cancelled_after(server) < long_answer // 2
    deadline = time.monotonic() + 10
    while server.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["running"] == 0


def test_client_giving_up_on_a_non_streamed_answer_cancels_it(keyed, long_answer):
    body = {"messages": LONG, "max_tokens": 100000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(keyed.url + CHAT, json=body, headers={"Authorization": "Bearer s3cret"}, timeout=0.2)
    assert cancelled_after(keyed) < long_answer // 2
    model = keyed.client("s3cret").models.list().data[0].id
    assert keyed.client("s3cret").chat.completions.create(model=model, messages=HI, max_tokens=3).choices[0].message


def converse(c, model, first: str, **kw):
    messages = [{"role": "user", "content": first}]
    r1 = c.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=6, **kw)
    messages += [{"role": "assistant", "content": r1.choices[0].message.content}, {"role": "user", "content": "and?"}]
    return r1, messages


def test_prompt_cache_across_turns_and_interleaved_conversations(server):
    c = server.client()
    model = c.models.list().data[0].id
    a1, a_next = converse(c, model, "The fox jumps")
    b1, b_next = converse(c, model, "Tokens stream to the terminal")
    # Two slots: each conversation's second turn finds its first turn cached, although the other came between.
    a2 = c.chat.completions.create(model=model, messages=a_next, temperature=0, max_tokens=4)
    b2 = c.chat.completions.create(model=model, messages=b_next, temperature=0, max_tokens=4)
    for first, second in ((a1, a2), (b1, b2)):
        assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
        assert second.usage.prompt_tokens > first.usage.prompt_tokens
    # cache_prompt: false (llama-server's switch) prefills everything
    again = c.chat.completions.create(model=model, messages=a_next, temperature=0, max_tokens=4,
                                      extra_body={"cache_prompt": False})
    assert again.usage.prompt_tokens_details.cached_tokens == 0
    assert again.choices[0].message.content == a2.choices[0].message.content


def test_concurrent_streams_take_turns(server):
    """Two slots: two long answers stream side by side; a third request waits in the queue and completes."""
    model = server.client().models.list().data[0].id
    firsts: dict[int, float] = {}
    ends: dict[int, float] = {}
    errors: list[BaseException] = []

    # Clients are made first and the requests leave together: on a loaded machine making a client can take
    # longer than the tiny model needs for a whole answer, and a request that arrives after the first answer
    # ended proves nothing about taking turns.
    together = threading.Barrier(3)

    def run(i: int) -> None:
        try:
            client = server.client()
            together.wait(60)
            time.sleep(0.02 * i)  # arrival order 0, 1, 2: the third one queues
            stream = client.chat.completions.create(
                model=model, messages=LONG, max_tokens=300, temperature=0, stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    firsts.setdefault(i, time.monotonic())
            ends[i] = time.monotonic()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(ends) == 3, errors
    # The first two ran side by side: each got its first token before the other finished.
    assert firsts[0] < ends[1] and firsts[1] < ends[0]


def test_model_named_in_request_is_loaded_on_demand(server):
    c = server.client()
    r = c.chat.completions.create(model="other", messages=HI, max_tokens=3)
    assert r.model == "other"
    assert server.health()["model"] == "other"
    server.wait_log(r"loading other")
    first = next(m.id for m in c.models.list().data if m.id != "other")
    assert c.chat.completions.create(model=first, messages=HI, max_tokens=3).model == first
    assert server.health()["model"] == first


def test_pick_slot_prefers_the_conversation_then_an_empty_slot_then_the_oldest():
    class FakeLM:
        def __init__(self, ids):
            self.cached_ids = ids

    def slot(ids, used):
        s = Slot(engine=type("E", (), {"lm": FakeLM(ids)})(), last_used=used)
        return s

    a, b, empty = slot([1, 2, 3, 4], 1.0), slot([1, 2, 9, 9, 9, 9], 2.0), slot([], 0.0)
    assert pick_slot([a, b, empty], [1, 2, 3, 4, 5], can_grow=True) is a
    # shares only a system prompt with b: b's conversation is kept, the empty slot is used
    assert pick_slot([b, empty], [1, 2, 7], can_grow=True) is empty
    assert pick_slot([b], [1, 2, 7], can_grow=True) is None  # the caller makes a new slot
    assert pick_slot([a, b], [5], can_grow=False) is a  # least recently used


def cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anechat", "serve", *args], check=False, capture_output=True,
                          text=True, timeout=120,
                          env=env)


def one_line_error(r: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert r.returncode == code, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("anechat:")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_command_line_errors(tiny_model_dirs, _isolated_home):
    model = ["--model-dir", str(tiny_model_dirs["llama"])]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        one_line_error(cli(*model, "--port", str(busy.getsockname()[1])), 5, "in use")
    one_line_error(cli(*model, "--host", "no-such-host.invalid"), 2, "--host")
    one_line_error(cli(*model, "--port", "99999"), 2, "--port")
    one_line_error(cli(*model, "--host", "0.0.0.0"), 2, "API key")
    one_line_error(cli(*model, "--slots", "0"), 2, "--slots")
    one_line_error(cli("--model-dir", "/no/such/dir", "--port", "0"), 3, "does not exist")
    one_line_error(cli("-m", "no-such-model", "--port", "0"), 3, "no-such-model")


def test_public_address_without_key_needs_the_flag_and_warns(tiny_model_dirs, tmp_path):
    s = Server(tiny_model_dirs["llama"], tmp_path, "--host", "0.0.0.0", "--allow-unauthenticated", "--slots", "1")
    try:
        assert "without an API key" in "".join(s.lines)
        assert s.health()["status"] == "ok"
    finally:
        s.stop()


def test_serve_imports_no_ui_toolkit():
    code = ("import sys, anechat.serve.app, anechat.commands.serve, anechat.serve.scheduler; "
            "print([m for m in ('textual', 'prompt_toolkit') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_request_parsing_follows_openai_shapes():
    from anechat.serve.protocol import parse_chat, parse_completion

    req = parse_chat({"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                                   {"role": "user", "content": "hi"}, {"role": "assistant", "content": None}],
                      "stop": "END", "max_completion_tokens": 7, "temperature": 0, "stream": True,
                      "stream_options": {"include_usage": True}, "some_future_field": 1})
    assert req.messages[0] == {"role": "system", "content": "Be brief."} and req.messages[2]["content"] == ""
    assert req.stop == ["END"] and req.stream and req.include_usage and req.cache_prompt
    params = req.params(SamplingParams())
    assert params.max_tokens == 7 and params.temperature == 0 and params.top_p == 1.0
    assert parse_completion({"prompt": ["one prompt"]}).prompt == "one prompt"
    assert parse_completion({"prompt": [[1, 2, 3]]}).prompt == [1, 2, 3]


def test_a_request_gets_the_models_recommended_sampling_under_the_users(tmp_path):
    """As in pipe mode: the model's generation_config.json, then the user's settings, then the request."""
    from types import SimpleNamespace

    from anechat.serve.protocol import parse_chat
    from anechat.serve.scheduler import ModelHost

    model = tmp_path / "m"
    model.mkdir()
    (model / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "top_p": 0.8, "top_k": 20}))
    host = ModelHost(load=lambda p: None, startup=SimpleNamespace(name="m"), startup_path=model,
                     defaults=SamplingParams(), user_sampling={"top_p": 0.5})
    try:
        base = host.defaults_for("m")
        assert (base.temperature, base.top_p, base.top_k) == (0.3, 0.5, 20)
        req = parse_chat({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.9})
        assert req.params(base).temperature == 0.9
    finally:
        host.close()

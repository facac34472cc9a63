"""The `openai` backend: any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, Ollama, hosted APIs).

One request per output (`n` outputs of a text are `n` requests, each with its own seed from (seed, text,
index), which servers that honour `seed` turn into reproducible outputs). Requests are spread round-robin
over several base URLs and run `concurrency` at a time. A request that times out, cannot connect, loses its
connection or part of its body, gets a 408/409/425/429 or 5xx, or returns malformed JSON is retried `retries`
times with exponential backoff (or after the server's Retry-After, seconds or an HTTP date, at most
`RETRY_AFTER_CAP`); after that the whole call raises `BuildStopped`, and the results that finished first have
already been handed to `on_done`, so the pool builder keeps them. An interrupt (Ctrl-C) stops a call at once:
the results already received go to `on_done` before it propagates, the requests in flight are abandoned.
`request_report()` counts what happened (requests, retries by cause, failures); the builder writes it into the
pool's manifest, and the stop message carries it.
The API key is read from the environment variable `api_key_env` at request time; it is never stored in a
setting, a log line, an error message or the cache key, and is cut out of any server text quoted in a message.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import os
import queue
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

from marsrm.pool.paraphrase import (EXAMPLES, INSTRUCTIONS, SYSTEM, BuildStopped, Paraphraser, PoolError, Task,
                                    chat_messages, clean_output, token_budget)

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
RETRY_AFTER_CAP = 120.0  # seconds: a server asking for longer is retried after this (and may stop the build)


class _Abandoned(Exception):
    """A request not sent because another one of the same call already failed for good."""


class TransientError(Exception):
    """A failure worth retrying; `cause` names its kind for the counters ("timeout", "HTTP 429", …)."""

    def __init__(self, message: str, cause: str, retry_after: float | None = None):
        super().__init__(message)
        self.cause, self.retry_after = cause, retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (delay in seconds, or an HTTP date) as seconds to wait, capped at RETRY_AFTER_CAP;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


class OpenAIParaphraser(Paraphraser):
    """Chat completions over HTTP, several endpoints, bounded concurrency, retries with backoff."""

    kind = "openai"
    # Each output is one request, maybe paid for: a stopped pool build keeps every one that finished (build.py).
    separate_requests = True

    def __init__(self, *, base_url=DEFAULT_BASE_URL, model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 4, timeout: float = 60.0, retries: int = 4, backoff: float = 1.0,
                 temperature: float = 0.7, top_p: float = 0.95, length_ratio: float = 1.5, max_new_tokens: int = 192):
        super().__init__()
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.base_urls = [u.rstrip("/") for u in urls if u and u.strip()]
        if not self.base_urls:
            raise PoolError("setting 'base_url': give at least one endpoint, e.g. http://127.0.0.1:8080/v1")
        for url in self.base_urls:
            if not url.startswith(("http://", "https://")):
                raise PoolError(f"setting 'base_url': '{url}' is not an http(s) URL")
        for name, value in (("concurrency", concurrency), ("max_new_tokens", max_new_tokens)):
            if value < 1:
                raise PoolError(f"setting '{name}': must be at least 1 (got {value})")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise PoolError("settings 'timeout' (> 0), 'retries' and 'backoff' (≥ 0) are out of range")
        self.model, self.api_key_env = model, api_key_env
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.temperature, self.top_p = temperature, top_p
        self.length_ratio, self.max_new_tokens = length_ratio, max_new_tokens
        self._lock = threading.Lock()
        self._turn = 0
        self.sent = 0  # chat requests sent, retries included
        self.retried = 0  # retries, all causes
        self.retries_by_cause: Counter = Counter()
        self.failed = 0  # requests given up after the last retry
        self.waited = 0.0  # seconds spent waiting before retries

    def settings(self) -> dict:
        # Endpoints are not part of the key: any server running the same model serves the same cache.
        return {"kind": self.kind, "model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                "length_ratio": self.length_ratio, "max_new_tokens": self.max_new_tokens, "system": SYSTEM,
                "instructions": INSTRUCTIONS, "examples": EXAMPLES}

    # -- HTTP ------------------------------------------------------------------------------------

    def _key(self) -> str | None:
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, text: str) -> str:
        """`text` (from a server or a socket error) with the API key cut out: a server may echo the headers."""
        key = self._key()
        return text.replace(key, "[api key]") if key else text

    def request_report(self) -> dict:
        """What the requests met so far: {"requests", "retries", "retries_by_cause", "failed", "retry_wait_seconds"}."""
        with self._lock:
            return {"requests": self.sent, "retries": self.retried,
                    "retries_by_cause": dict(sorted(self.retries_by_cause.items())), "failed": self.failed,
                    "retry_wait_seconds": round(self.waited, 3)}

    def _report_line(self) -> str:
        report = self.request_report()
        causes = ", ".join(f"{cause} {count}" for cause, count in report["retries_by_cause"].items())
        return (f"{report['requests']} requests, {report['retries']} retries" + (f" ({causes})" if causes else "")
                + f", {report['failed']} failed")

    def _request(self, url: str, payload: dict | None, timeout: float) -> dict:
        """One HTTP exchange → parsed JSON; raises TransientError (retry) or PoolError (give up now)."""
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        method = "GET" if data is None else "POST"
        request = urllib.request.Request(url, data=data, headers=self._headers(), method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            try:
                # the key out first, then the cut: a key across the cut would otherwise leak in part
                detail = self._redact(err.read(65536).decode("utf-8", "replace")).strip()[:200]
            except (OSError, http.client.HTTPException):  # the error body itself was cut off
                detail = "(body cut off)"
            if err.code in RETRY_STATUS:
                retry_after = retry_after_seconds(err.headers.get("Retry-After") if err.headers else None)
                raise TransientError(f"HTTP {err.code} from {url}: {detail}", f"HTTP {err.code}", retry_after) from None
            if err.code in (401, 403):
                raise PoolError(f"{url}: HTTP {err.code} (not authorised); set the API key in the environment "
                                f"variable {self.api_key_env} (setting 'api_key_env')") from None
            raise PoolError(f"{url}: HTTP {err.code}: {detail}") from None
        except http.client.IncompleteRead as err:  # the connection closed before Content-Length bytes came
            raise TransientError(f"{url}: response cut off after {len(err.partial)} bytes", "truncated body") from None
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            timed_out = isinstance(reason, (TimeoutError, socket.timeout))
            raise TransientError(self._redact(f"{url}: {type(reason).__name__}: {reason}"),
                                 "timeout" if timed_out else "connection") from None
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TransientError(self._redact(f"{url}: malformed JSON in the response ({body[:80]!r})"),
                                 "malformed response") from None

    def check(self) -> None:
        """Every endpoint must answer GET /models now; an unreachable one stops the build before any work."""
        for base in self.base_urls:
            try:
                listing = self._request(f"{base}/models", None, timeout=min(self.timeout, 10.0))
            except TransientError as err:
                raise PoolError(f"setting 'base_url': endpoint {base} is unreachable ({err}); start the server or "
                                "fix --base-url") from None
            if self.model is None:
                models = [m.get("id") for m in (listing.get("data") or []) if isinstance(m, dict)]
                if not models:
                    raise PoolError(f"setting 'model': {base}/models lists no model; name one with --model")
                self.model = models[0]

    def _call(self, task: Task, abandon: threading.Event) -> str:
        with self._lock:
            base = self.base_urls[self._turn % len(self.base_urls)]
            self._turn += 1
        payload = {"model": self.model or "default", "temperature": self.temperature, "top_p": self.top_p,
                   "seed": task.seed % (2**31), "max_tokens": token_budget(task.text, self.length_ratio,
                                                                          self.max_new_tokens),
                   "messages": chat_messages(task)}
        rng = random.Random(task.seed)  # jitter only; it never touches the output
        for attempt in range(self.retries + 1):
            if abandon.is_set():
                raise _Abandoned()
            try:
                with self._lock:
                    self.sent += 1
                body = self._request(f"{base}/chat/completions", payload, self.timeout)
                choice = (body.get("choices") or [None])[0] if isinstance(body, dict) else None
                if not isinstance(choice, dict):
                    raise TransientError(f"{base}: response without choices", "malformed response")
                message = choice.get("message") or {}
                text = message.get("content") if isinstance(message, dict) else None
                usage = body.get("usage") or {}
                with self._lock:
                    self.tokens += int(usage.get("completion_tokens") or len((text or "").split()))
                return clean_output(text or "", task.text)  # empty text is an answer: the filter drops it as "empty"
            except TransientError as err:
                if attempt == self.retries:
                    abandon.set()
                    with self._lock:
                        self.failed += 1
                    raise BuildStopped(f"openai paraphraser: giving up after {self.retries + 1} attempts: {err} "
                                       f"[{self._report_line()}]") from None
                delay = err.retry_after if err.retry_after is not None else \
                    self.backoff * 2**attempt * (0.5 + rng.random() / 2)
                with self._lock:
                    self.retried += 1
                    self.retries_by_cause[err.cause] += 1
                    self.waited += delay
                abandon.wait(delay)  # a call that stops meanwhile ends the wait (and the next attempt)
                base = self.base_urls[(self.base_urls.index(base) + 1) % len(self.base_urls)]  # try another one
        raise AssertionError("unreachable")

    def complete(self, tasks: list[Task], on_done=None) -> list[str]:
        """One output per task, `concurrency` requests at a time; `on_done(index, text)` in this thread as each
        finishes. A request that fails for good stops the call once the requests in flight have finished (their
        results are handed over). An interrupt, or an exception from `on_done`, stops it at once: what was received
        is handed to `on_done` first; requests in flight are abandoned on daemon threads, which neither hold up the
        process's exit nor send anything more."""
        out: list[str | None] = [None] * len(tasks)
        abandon = threading.Event()
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for index in range(len(tasks)):
            todo.put(index)
        results: queue.SimpleQueue = queue.SimpleQueue()  # (index, text, error); None: a worker has stopped

        def work():
            try:
                while not abandon.is_set():
                    try:
                        index = todo.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        results.put((index, self._call(tasks[index], abandon), None))
                    except Exception as err:  # handed to the calling thread, which decides
                        results.put((index, None, err))
            finally:
                results.put(None)

        workers = min(self.concurrency, len(tasks))
        for _ in range(workers):
            threading.Thread(target=work, name="marsrm-openai", daemon=True).start()
        failure = None

        def hand_over(index, text):
            out[index] = text
            if on_done is not None:
                on_done(index, text)

        try:
            while workers:
                item = results.get()
                if item is None:
                    workers -= 1
                elif item[2] is None:
                    hand_over(item[0], item[1])
                elif failure is None and not isinstance(item[2], _Abandoned):
                    failure = item[2]  # stop sending; the requests in flight finish and are kept
                    abandon.set()
        except BaseException:
            abandon.set()
            # Answers already received were paid for: the caller gets them before the interrupt reaches it.
            while True:
                try:
                    item = results.get_nowait()
                except queue.Empty:
                    break
                if item is not None and item[2] is None:
                    hand_over(item[0], item[1])
            raise
        if failure is not None:
            raise failure
        return out

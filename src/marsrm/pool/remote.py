"""The `openai` backend: any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, Ollama, hosted APIs).

One request per output (`n` outputs of a text are `n` requests, each with its own seed from (seed, text,
index), which servers that honour `seed` turn into reproducible outputs). Requests are spread round-robin
over several base URLs and run `concurrency` at a time. A request that times out, cannot connect, gets a
429 or 5xx, or returns malformed JSON is retried `retries` times with exponential backoff (and the server's
Retry-After when it sends one); after that the whole call raises `BuildStopped`, and the results that
finished first have already been handed to `on_done`, so the pool builder keeps them.
The API key is read from the environment variable `api_key_env` at request time; it is never stored in a
setting, a log line, an error message or the cache key.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

from marsrm.pool.paraphrase import (EXAMPLES, INSTRUCTIONS, SYSTEM, BuildStopped, Paraphraser, PoolError, Task,
                                    chat_messages, clean_output, token_budget)

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Abandoned(Exception):
    """A request not sent because another one of the same call already failed for good."""


class TransientError(Exception):
    """A failure worth retrying (timeout, connection, 429/5xx, malformed body)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIParaphraser(Paraphraser):
    """Chat completions over HTTP, several endpoints, bounded concurrency, retries with backoff."""

    kind = "openai"

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
        self._abandon = threading.Event()
        self._turn = 0
        self.retried = 0  # requests that needed a retry (reported by the builder)

    def settings(self) -> dict:
        # Endpoints are not part of the key: any server running the same model serves the same cache.
        return {"kind": self.kind, "model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                "length_ratio": self.length_ratio, "max_new_tokens": self.max_new_tokens, "system": SYSTEM,
                "instructions": INSTRUCTIONS, "examples": EXAMPLES}

    # -- HTTP ------------------------------------------------------------------------------------

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, url: str, payload: dict | None, timeout: float) -> dict:
        """One HTTP exchange → parsed JSON; raises TransientError (retry) or PoolError (give up now)."""
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        method = "GET" if data is None else "POST"
        request = urllib.request.Request(url, data=data, headers=self._headers(), method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode("utf-8", "replace").strip()
            if err.code in RETRY_STATUS:
                retry_after = err.headers.get("Retry-After") if err.headers else None
                raise TransientError(f"HTTP {err.code} from {url}: {detail}",
                                     float(retry_after) if retry_after and retry_after.isdigit() else None) from None
            if err.code in (401, 403):
                raise PoolError(f"{url}: HTTP {err.code} (not authorised); set the API key in the environment "
                                f"variable {self.api_key_env} (setting 'api_key_env')") from None
            raise PoolError(f"{url}: HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TransientError(f"{url}: {type(reason).__name__}: {reason}") from None
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TransientError(f"{url}: malformed JSON in the response ({body[:80]!r})") from None

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

    def _call(self, task: Task) -> str:
        with self._lock:
            base = self.base_urls[self._turn % len(self.base_urls)]
            self._turn += 1
        payload = {"model": self.model or "default", "temperature": self.temperature, "top_p": self.top_p,
                   "seed": task.seed % (2**31), "max_tokens": token_budget(task.text, self.length_ratio,
                                                                          self.max_new_tokens),
                   "messages": chat_messages(task)}
        rng = random.Random(task.seed)  # jitter only; it never touches the output
        for attempt in range(self.retries + 1):
            if self._abandon.is_set():
                raise _Abandoned()
            try:
                body = self._request(f"{base}/chat/completions", payload, self.timeout)
                choice = (body.get("choices") or [None])[0]
                if not isinstance(choice, dict):
                    raise TransientError(f"{base}: response without choices")
                message = choice.get("message") or {}
                text = message.get("content") if isinstance(message, dict) else None
                usage = body.get("usage") or {}
                with self._lock:
                    self.tokens += int(usage.get("completion_tokens") or len((text or "").split()))
                return clean_output(text or "", task.text)  # empty text is an answer: the filter drops it as "empty"
            except TransientError as err:
                if attempt == self.retries:
                    self._abandon.set()
                    raise BuildStopped(f"openai paraphraser: giving up after {self.retries + 1} attempts: "
                                       f"{err}") from None
                with self._lock:
                    self.retried += 1
                delay = err.retry_after if err.retry_after is not None else self.backoff * 2**attempt
                time.sleep(delay * (0.5 + rng.random() / 2) if err.retry_after is None else delay)
                base = self.base_urls[(self.base_urls.index(base) + 1) % len(self.base_urls)]  # try another one
        raise AssertionError("unreachable")

    def complete(self, tasks: list[Task], on_done=None) -> list[str]:
        out: list[str | None] = [None] * len(tasks)
        failure = None
        self._abandon.clear()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="marsrm-openai") as pool:
            futures = {pool.submit(self._call, task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                if future.cancelled() or isinstance(future.exception(), _Abandoned):
                    continue
                if future.exception() is not None:
                    if failure is None:  # stop sending; requests already in flight finish and are kept
                        failure = future.exception()
                        self._abandon.set()
                        for other in futures:
                            other.cancel()
                    continue
                out[futures[future]] = future.result()
                if on_done is not None:
                    on_done(futures[future], out[futures[future]])
        if failure is not None:
            raise failure
        return out

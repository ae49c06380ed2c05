"""JSON POSTs that survive a rate-limited or restarting server, and never hang.

Hosted reasoning APIs answer 429 with a Retry-After; a `vllm serve` being restarted refuses
connections or answers 503 for a minute. Those are retried with exponential backoff and jitter (a
Retry-After is honoured), a bounded number of times. Every attempt has one total deadline,
connection to last byte: httpx's timeouts bound each read, so a server dripping a byte a second
would hold a request forever. Each attempt opens its own connection, whose socket is shut down at
the deadline, which wakes a read blocked anywhere (headers or body). What still fails raises
ServiceError: one line, exit 1.
"""

from __future__ import annotations

import email.utils
import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx

from tops.errors import ServiceError, UserError

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})  # and any other 5xx
_MAX_BODY_BYTES = 256 << 20  # a chat completion is kilobytes; a bigger body is a broken server


class Retryable(Exception):
    """One attempt failed in a way another attempt may not (HTTP status, network, deadline)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class Policy:
    timeout_s: float  # one attempt, start to last byte
    retries: int
    backoff_s: float
    max_wait_s: float

    def wait(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before attempt `attempt + 1`: the server's Retry-After when it gave one, else
        an exponential backoff with jitter (half fixed, half random), both capped."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait_s)
        step = min(self.max_wait_s, self.backoff_s * 2 ** attempt)
        return step / 2 + random.uniform(0, step / 2)


@dataclass
class Usage:
    """What the server reported (`usage`) and what it cost to get it, summed over requests."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, usage: object, retries: int) -> None:
        usage = usage if isinstance(usage, dict) else {}
        with self.lock:
            self.requests += 1
            self.retries += retries
            for name in ("prompt_tokens", "completion_tokens"):
                value = usage.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {"requests": self.requests, "retries": self.retries, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens,
                    "total_tokens": self.prompt_tokens + self.completion_tokens}


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


class RetryingClient:
    """POST JSON, get JSON, under `policy`. `stop` set: no new attempt starts (a sibling request
    failed for good, its shard is lost anyway)."""

    def __init__(self, headers: dict[str, str], policy: Policy):
        self.policy = policy
        # No keep-alive: every attempt connects anew, so its socket is known and can be cut.
        self.client = httpx.Client(headers=headers, timeout=policy.timeout_s,
                                   limits=httpx.Limits(max_keepalive_connections=0))
        self.stop = threading.Event()
        self.usage = Usage()

    def post(self, url: str, body: dict, what: str) -> dict:
        """The parsed JSON answer; ServiceError naming `what` and the last reason when every
        attempt failed. A 4xx other than the retried ones is a UserError at once: the request as
        configured is wrong for this server (key, URL, model, limits), retrying cannot help."""
        attempt = 0
        while True:
            try:
                answer = self._attempt(url, body)
                self.usage.add(answer.get("usage"), attempt)
                return answer
            except Retryable as exc:
                if attempt >= self.policy.retries or self.stop.is_set():
                    tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    raise ServiceError(f"{url}: {what} failed after {tries}: {exc} (engine.max_retries="
                                       f"{self.policy.retries}, engine.request_timeout_s={self.policy.timeout_s:g}); "
                                       "finished shards are kept, rerun the same command to resume") from None
                delay = self.policy.wait(attempt, exc.retry_after)
                attempt += 1
                if self.stop.wait(delay):
                    raise ServiceError(f"{url}: {what} abandoned: another request of the shard failed") from None

    def _attempt(self, url: str, body: dict) -> dict:
        sockets: list[socket.socket] = []
        expired = threading.Event()

        def cut() -> None:  # the deadline: wake any read blocked on this attempt's connection
            expired.set()
            for sock in sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def trace(event: str, info: dict) -> None:
            if event == "connection.connect_tcp.complete":
                sock = info["return_value"].get_extra_info("socket")
                if sock is not None:
                    sockets.append(sock)
                    if expired.is_set():
                        cut()

        timer = threading.Timer(self.policy.timeout_s, cut)
        timer.daemon = True
        timer.start()
        try:
            with self.client.stream("POST", url, json=body, extensions={"trace": trace}) as response:
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if expired.is_set():
                        break
                    if len(data) > _MAX_BODY_BYTES:
                        raise Retryable(f"answer over {_MAX_BODY_BYTES >> 20} MiB")
                if expired.is_set():
                    raise Retryable(f"no complete answer within {self.policy.timeout_s:g} s")
                status = response.status_code
                if status in RETRY_STATUS or status >= 500:
                    raise Retryable(f"HTTP {status}: {_snippet(data)}",
                                    retry_after_seconds(response.headers.get("retry-after")))
                if status >= 400:  # the request as configured is wrong for this server
                    hint = (" (check the key in engine.api_key_env)" if status in (401, 403) else
                            " (check engine.base_url and engine.served_model)" if status == 404 else "")
                    raise UserError(f"{url}: the server refused the request: HTTP {status}: {_snippet(data)}{hint}")
        except httpx.TransportError as exc:  # refused, dropped, reset, timed out, or cut at the deadline
            if expired.is_set():
                raise Retryable(f"no complete answer within {self.policy.timeout_s:g} s") from None
            raise Retryable(f"{exc.__class__.__name__}: {str(exc)[:200] or 'connection failed'}") from None
        finally:
            timer.cancel()
        try:
            answer = json.loads(bytes(data))
        except ValueError:
            raise Retryable(f"HTTP {status} with a body that is not JSON: {_snippet(data)}") from None
        if not isinstance(answer, dict):
            raise Retryable(f"HTTP {status} with JSON that is not an object: {_snippet(data)}")
        return answer

    def close(self) -> None:
        self.stop.set()
        self.client.close()


def _snippet(data: bytes, limit: int = 200) -> str:
    text = " ".join(bytes(data[:limit * 4]).decode("utf-8", "replace").split())
    return (text[:limit - 1] + "…" if len(text) > limit else text) or "(empty body)"

"""A deadline on every Hub HTTP request, body included.

huggingface_hub's client has no timeout (`timeout=None`): a Hub, proxy or HF_ENDPOINT that accepts
a connection and never answers (or drips a byte a second) held `tops export` and the flow's
export stage forever. Its HTTP client is replaceable (`set_client_factory`), so ours wraps the
transport: every request gets `timeout_s` in total — connect, send, and the whole response,
checked between the chunks it reads — and a request past it raises `HubTimeout`, which
huggingface_hub does not retry (its backoff retries httpx errors only).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator

from tops.errors import ServiceError

DEFAULT_TIMEOUT_S = 600.0  # one Hub request, a large file's upload included

_LOCK = threading.Lock()


class HubTimeout(ServiceError):
    """A Hub request ran past its deadline (exit 1 with one line: not the input's fault)."""


@contextlib.contextmanager
def deadline(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """huggingface_hub's shared client enforces `timeout_s` per request inside this block; its
    default client (model downloads elsewhere in the process) is back after it."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    with _LOCK:  # one push at a time holds the factory
        set_client_factory(lambda: _client(timeout_s))
        try:
            yield
        finally:
            set_client_factory(default_client_factory)


def _client(timeout_s: float):
    import httpx2
    from huggingface_hub.utils._http import default_client_factory

    base = default_client_factory()  # its event hooks (headers, offline mode) stay ours
    hooks = base.event_hooks
    base.close()
    transport = _deadline_transport_class()(httpx2.HTTPTransport(), timeout_s)
    return httpx2.Client(transport=transport, event_hooks=hooks,
                         follow_redirects=True, timeout=timeout_s)


@functools.cache
def _deadline_transport_class():
    """Built on first use: httpx2 is imported only when the Hub is."""
    import httpx2

    class DeadlineTransport(httpx2.BaseTransport):
        def __init__(self, inner, timeout_s: float):
            self.inner, self.timeout_s = inner, timeout_s

        def handle_request(self, request):
            end = time.monotonic() + self.timeout_s
            left = self.timeout_s
            request.extensions["timeout"] = {"connect": left, "read": left, "write": left, "pool": left}
            try:
                response = self.inner.handle_request(request)
            except httpx2.TimeoutException:
                raise self._expired(request) from None
            response.stream = DeadlineStream(response.stream, end, lambda: self._expired(request))
            return response

        def _expired(self, request) -> HubTimeout:
            return HubTimeout(f"the Hub at {request.url.scheme}://{request.url.netloc.decode()} did not answer "
                              f"{request.method} {request.url.path[:80]} within {self.timeout_s:g} s")

        def close(self) -> None:
            self.inner.close()

    class DeadlineStream(httpx2.SyncByteStream):
        def __init__(self, inner, end: float, expired):
            self.inner, self.end, self.expired = inner, end, expired

        def __iter__(self):
            try:
                for chunk in self.inner:
                    if time.monotonic() > self.end:
                        raise self.expired()
                    yield chunk
            except httpx2.TimeoutException:
                raise self.expired() from None

        def close(self) -> None:
            self.inner.close()

    return DeadlineTransport


"""HTTP to the model server with timeouts, bounded retries and our named errors.

Transient failures — the server cannot be reached (connection refused or reset, a connect timeout)
or says it is overloaded or restarting (502, 503, 504) — are retried with exponential backoff, a
bounded number of times, then raised as `BackendUnavailableError`. A request that is sent but not
answered within the timeout is not retried here (the work may be running; the session graph's own
retry decides) and raises `BackendTimeoutError`. Both are `TransientBackendError`s. A 4xx becomes
the server's named error when it is one of ours (`ArtifactNotFoundError`, `MediaTooLargeError`,
`ConfigError`, …), else `RemoteRequestError` (a ValueError); a 500 is `RemoteServerError`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from codi2_agent.backends import TransientBackendError
from codi2_agent.serving.wire import error_type

__all__ = [
    "BackendTimeoutError",
    "BackendUnavailableError",
    "RemoteClient",
    "RemoteRequestError",
    "RemoteServerError",
]

logger = logging.getLogger(__name__)
RETRY_STATUS = frozenset({502, 503, 504})


class BackendUnavailableError(TransientBackendError, ConnectionError):
    """The model server could not be reached, or stayed unavailable, through every retry."""


class BackendTimeoutError(TransientBackendError, TimeoutError):
    """The model server did not answer within the timeout."""


class RemoteRequestError(ValueError):
    """The model server refused the request as bad input (a 4xx); the message says why."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RemoteServerError(RuntimeError):
    """The model server failed on a request (a 500); the message is the server's."""


class RemoteClient:
    """One server's HTTP API (a pooled `httpx.Client`, safe to share between threads).

    Args:
        url: the server, e.g. ``"http://127.0.0.1:8000"``.
        timeout: seconds to wait for an answer (generation included).
        connect_timeout: seconds to wait for a connection.
        retries: extra attempts after a transient failure (0: none).
        backoff: the first wait between attempts, doubled each time (capped at `max_backoff`).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 300.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 4.0,
    ) -> None:
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("retries and backoff must be >= 0 and timeout > 0")
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self._http = httpx.Client(
            base_url=self.url, timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        )

    @property
    def timeout(self) -> float | None:
        """Seconds to wait for an answer; set it to change the wait of later requests."""
        return self._http.timeout.read

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"timeout must be > 0, got {seconds}")
        connect = self._http.timeout.connect
        self._http.timeout = httpx.Timeout(seconds, connect=min(connect or seconds, seconds))

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"RemoteClient({self.url!r})"

    # --- requests -----------------------------------------------------------------------------------
    def get_json(self, path: str) -> Any:
        return self.request("GET", path).json()

    def post_json(self, path: str, body: Any) -> Any:
        return self.request("POST", path, json=body).json()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; a non-2xx answer raises its named error."""
        for attempt in self._attempts(method, path):
            with attempt:
                response = self._http.request(method, path, **kwargs)
                self._check(response)
                return response
        raise AssertionError("unreachable: the last attempt raises")

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """An open streamed response (its status checked before the body is read)."""
        response: httpx.Response | None = None
        for attempt in self._attempts(method, path):
            with attempt:
                response = self._http.send(self._http.build_request(method, path, **kwargs), stream=True)
                if response.status_code >= 400:
                    response.read()
                    response.close()
                    self._check(response)
                break
        assert response is not None
        try:
            yield response
        except httpx.TimeoutException:
            raise BackendTimeoutError(f"{self.url}{path}: no answer within the timeout") from None
        except httpx.TransportError as e:
            raise BackendUnavailableError(f"{self.url}{path}: the stream broke ({e})") from None
        finally:
            response.close()

    def _attempts(self, method: str, path: str) -> Iterator[Any]:
        """Context managers, one per attempt: a transient failure inside one is swallowed while
        attempts remain (after a backoff), and raised as our named error on the last."""
        for attempt in range(self.retries + 1):
            yield _Attempt(self, method, path, last=attempt == self.retries, number=attempt)

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        kind, message = _error_of(response)
        where = f"{response.request.method} {response.request.url.path}"
        if status in RETRY_STATUS:
            raise _Retryable(f"{where}: the server is unavailable ({status}): {message}")
        if 400 <= status < 500:
            cls = error_type(kind) if kind else None
            if cls is not None:
                raise cls(message)
            raise RemoteRequestError(f"{where} was refused ({status}): {message}", status=status)
        raise RemoteServerError(f"{where} failed on the server ({status} {kind or ''}): {message}")


class _Retryable(Exception):
    """A 502/503/504: worth another attempt."""


class _Attempt:
    def __init__(self, client: RemoteClient, method: str, path: str, *, last: bool, number: int) -> None:
        self.client, self.method, self.path, self.last, self.number = client, method, path, last, number

    def __enter__(self) -> _Attempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> bool:
        if error is None:
            return False
        where = f"{self.client.url}{self.path}"
        if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)):
            problem = f"cannot reach the model server at {where} ({error or type(error).__name__})"
        elif isinstance(error, _Retryable):
            problem = str(error)
        elif isinstance(error, httpx.TimeoutException):
            raise BackendTimeoutError(f"{self.method} {where}: no answer within the timeout") from None
        elif isinstance(error, httpx.TransportError):
            problem = f"{self.method} {where} failed in transit ({error})"
        else:
            return False  # our named errors, raised as they are
        attempts = self.number + 1
        if self.last:
            raise BackendUnavailableError(f"{problem}; gave up after {attempts} attempt(s)") from None
        wait = min(self.client.max_backoff, self.client.backoff * (2**self.number))
        logger.warning(
            "%s; retrying in %.2f s (attempt %d of %d)", problem, wait, attempts + 1, self.client.retries + 1
        )
        time.sleep(wait)
        return True


def _error_of(response: httpx.Response) -> tuple[str | None, str]:
    """(error type, message) of an error response: our JSON body, FastAPI's, or plain text."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None, response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("type"), str(body["error"].get("message", ""))
    if isinstance(body, dict) and "detail" in body:
        return None, json.dumps(body["detail"])[:500]
    return None, json.dumps(body)[:500]

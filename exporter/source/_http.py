"""One GET against Letta: bounded concurrency, retries, and errors that name the URL, never a key.

Every Letta call of the source goes through :class:`Requester`, so the semaphore, the retry
policy, the counters and the translation of httpx errors into the exporter's error tree live in
one place (as httpx maps httpcore errors at its transport seam).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeVar
from urllib.parse import quote

import httpx

from .._ratelimit import RateLimitedLog
from .._retry import parse_retry_after, wait_or_stop
from ..errors import RecordInvalidError, SourceConnectionError, SourceHTTPError, SourceResponseError
from ..models import load_json
from ._retry import RetryPolicy, SourceStats, is_retryable
from ._transport import BodyTooLargeError, LeanTransport

__all__ = ["Params", "Requester", "safe_url"]

_logger = logging.getLogger(__name__)

T = TypeVar("T")

Params = Mapping[str, str | int | Sequence[str]]

#: Longest excerpt of an error body put in an exception message.
_DETAIL_MAX: Final = 200
#: Retry warnings are logged at most this often (seconds); the rest go to DEBUG.
_RETRY_LOG_INTERVAL: Final = 30.0
_AUTH_STATUSES: Final = frozenset({401, 403})


def safe_url(url: httpx.URL) -> str:
    """The URL as it may appear in a message or a log: without any user:password part."""
    return str(url.copy_with(userinfo=b"")) if url.userinfo else str(url)


def _bearer_secrets(http: httpx.AsyncClient) -> tuple[str, ...]:
    # The key is only in the client's headers; remember it to scrub it from any server echo.
    value = http.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    secrets = [s for s in (value, token if scheme.lower() == "bearer" else "") if len(s) >= 4]
    if http.base_url.password:
        secrets.append(http.base_url.password)
    return tuple(sorted(set(secrets), key=len, reverse=True))


class Requester:
    """Sends GETs to Letta with a concurrency bound and the retry policy.

    Args:
        http: the client (base URL, headers, timeouts and connection pool set by its maker).
        retry: when and how long to retry.
        concurrency: requests in flight at most.
        stop: set on shutdown; it interrupts a backoff wait (the call then fails at once).
        lean: the lean transport behind ``http``, if any: parameterless GETs then go to it
            directly (see ``_RawGets``).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy,
        concurrency: int,
        stop: asyncio.Event | None,
        lean: LeanTransport | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.http = http
        self.retry = retry
        self.stats = SourceStats()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._stop = stop if stop is not None else asyncio.Event()
        self._secrets = _bearer_secrets(http)
        self._raw = _RawGets.of(http, lean)
        self._has_key = bool(self._secrets) and "authorization" in http.headers
        self._retry_log = RateLimitedLog(_logger, interval=_RETRY_LOG_INTERVAL)

    def scrub(self, text: str) -> str:
        """``text`` with the API key (should a server ever echo it) blanked out."""
        for secret in self._secrets:
            text = text.replace(secret, "[secure]")
        return text

    def url_for(self, path: str, params: Params | None = None) -> str:
        """The full URL of a request, safe for messages."""
        return safe_url(self.http.build_request("GET", path, params=params).url)

    async def get(
        self, path: str, params: Params | None = None, *, missing_ok: bool = False
    ) -> bytes | None:
        """GET ``path`` and return the body of a 2xx answer.

        Connection errors, timeouts, 429 and 5xx are retried per the policy; other statuses
        fail at once.

        Args:
            path: the route, e.g. ``/v1/steps/``.
            params: query parameters (a sequence value repeats the key).
            missing_ok: answer ``None`` for a 404 instead of raising.

        Raises:
            SourceHTTPError: an error status, after any retries; the message names the URL and
                the status (and, for 401/403, says the API key was refused or missing).
            SourceConnectionError: Letta could not be reached, after retries.
            SourceResponseError: the body is larger than the transport reads, or its
                ``Content-Encoding`` does not decode.
        """
        retries = 0
        raw = self._raw if not params else None
        while True:
            request = None if raw else self.http.build_request("GET", path, params=params)
            error: SourceHTTPError | SourceConnectionError
            retry_after: float | None = None
            try:
                if raw is not None:
                    status, headers, content = await self._send_raw(raw, path)
                    if 200 <= status < 300:
                        return content
                    # Not the hot path any more: httpx objects for the error handling below.
                    request = self.http.build_request("GET", path)
                    response = httpx.Response(
                        status, headers=headers, content=content, request=request
                    )
                else:
                    assert request is not None
                    response = await self._send(request)
            except (BodyTooLargeError, httpx.DecodingError) as exc:
                # The same bytes would come again: not worth a retry.
                self.stats.failures += 1
                raise SourceResponseError(self.url_for(path, params), str(exc)) from exc
            except httpx.UnsupportedProtocol as exc:
                self.stats.failures += 1
                raise SourceConnectionError(
                    self.url_for(path, params), self.scrub(str(exc))
                ) from exc
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                reason = type(exc).__name__
                if text := self.scrub(str(exc)).strip():
                    reason = f"{reason}: {text}"
                error = SourceConnectionError(
                    self.url_for(path, params), reason, attempts=retries + 1
                )
                cause: BaseException = exc
            else:
                url = safe_url(response.request.url)
                status = response.status_code
                if 200 <= status < 300:
                    return response.content
                if status == 404 and missing_ok:
                    return None
                error = SourceHTTPError(
                    url, status, detail=self._detail(response), attempts=retries + 1
                )
                cause = error
                if not is_retryable(status):
                    self.stats.failures += 1
                    raise error
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retries >= self.retry.max_retries:
                self.stats.failures += 1
                raise error from (None if cause is error else cause)
            delay = self.retry.backoff(retries, retry_after=retry_after)
            retries += 1
            self.stats.retries += 1
            self._log_retry(error, retries, delay)
            if await self._stopped_during(delay):
                self.stats.failures += 1
                raise error from (None if cause is error else cause)

    async def get_parsed(
        self,
        path: str,
        parse: Callable[[bytes], T],
        params: Params | None = None,
        *,
        missing_ok: bool = False,
    ) -> T | None:
        """GET and parse the body; ``None`` only for a 404 with ``missing_ok``.

        Raises:
            SourceResponseError: the body is not JSON, or not the shape the route returns.
            RecordInvalidError: a record in the body has a field of the wrong type (the error
                names the record and the field).
            SourceHTTPError, SourceConnectionError: as :meth:`get`.
        """
        raw = await self.get(path, params, missing_ok=missing_ok)
        if raw is None:
            return None
        try:
            return parse(raw)
        except RecordInvalidError as exc:
            if exc.record_id is None and exc.field is None:
                # The body as a whole is unreadable (not JSON, or not a list/object): that is
                # the server's answer being wrong, not one bad record.
                raise SourceResponseError(
                    self.url_for(path, params), f"{exc.kind}: {exc.message}"
                ) from exc
            raise

    async def _send_raw(
        self, raw: _RawGets, path: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        async with self._semaphore:
            stats = self.stats
            stats.requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                return await raw.get(path)
            finally:
                stats.in_flight -= 1

    async def _send(self, request: httpx.Request) -> httpx.Response:
        async with self._semaphore:
            stats = self.stats
            stats.requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                return await self.http.send(request)
            finally:
                stats.in_flight -= 1

    async def _stopped_during(self, delay: float) -> bool:
        """Wait ``delay`` seconds unless shutdown is requested first; True when it was."""
        return await wait_or_stop(self._stop, delay)

    def _detail(self, response: httpx.Response) -> str | None:
        if response.status_code in _AUTH_STATUSES:
            if self._has_key:
                return "the API key was refused (check LETTA_API_KEY)"
            return "Letta wants an API key (set LETTA_API_KEY)"
        text = response.text.strip()
        if not text:
            return None
        try:
            body = load_json(text)  # any depth: a ValueError, never a RecursionError
        except ValueError:
            pass
        else:
            if isinstance(body, dict) and "detail" in body:
                detail = body["detail"]
                with contextlib.suppress(RecursionError):
                    text = detail if isinstance(detail, str) else json.dumps(detail)
        text = " ".join(self.scrub(text).split())
        return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."

    def _log_retry(self, error: Exception, retry: int, delay: float) -> None:
        self._retry_log.warning(
            "retry", "%s; retry %d of %d in %.2fs", error, retry, self.retry.max_retries, delay
        )


class _RawGets:
    """Parameterless GETs straight through the lean transport (one per trace: the hot path).

    The request headers (the client's, ``Host``) and the base URL's path are worked out once;
    each GET only adds its path. Used only when the client's transport is the lean one and
    nothing (auth flow, event hooks, cookies) would change a request on its way through httpx.
    It asks for ``gzip, deflate`` only (whatever the client would ask for), and decodes those
    itself, as ``httpx.Response`` would: a compressing proxy in front of Letta is common.
    """

    def __init__(self, transport: LeanTransport, http: httpx.AsyncClient) -> None:
        base = http.base_url
        self._transport = transport
        self._key = (base.scheme, base.host, base.port or (443 if base.scheme == "https" else 80))
        self._prefix = base.raw_path.rstrip(b"/")
        headers = [(b"Host", base.netloc)]  # host[:port], as httpx sends it
        headers.extend(
            (name, value)
            for name, value in http.headers.raw
            if name.lower() not in (b"host", b"accept-encoding")
        )
        headers.append((b"Accept-Encoding", b"gzip, deflate"))
        self._headers = headers
        timeout = http.timeout
        self._timeouts = {"connect": timeout.connect, "read": timeout.read, "write": timeout.write}
        self._max_body = transport.max_body

    @classmethod
    def of(cls, http: httpx.AsyncClient, lean: LeanTransport | None) -> _RawGets | None:
        if lean is None:
            return None
        if http.auth is not None or any(http.event_hooks.values()) or http.cookies:
            return None
        return cls(lean, http)

    async def get(self, path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        target = self._prefix + quote(path, safe="/:@!$&'()*+,;=-._~").encode("ascii")
        status, headers, content = await self._transport.get_raw(
            self._key, target, self._headers, self._timeouts
        )
        for name, value in headers:
            if name.lower() == b"content-encoding":
                content = decode_body(content, value, limit=self._max_body)
        return status, headers, content


def decode_body(content: bytes, encoding: bytes, *, limit: int) -> bytes:
    """``content`` with its ``Content-Encoding`` (``gzip``, ``deflate`` or ``identity``) undone.

    Raises:
        httpx.DecodingError: an encoding that was not asked for, or a body that does not
            decode.
        BodyTooLargeError: the decoded body would be larger than ``limit``.
    """
    for coding in reversed(encoding.lower().split(b",")):
        coding = coding.strip()
        if coding in (b"", b"identity"):
            continue
        if coding not in _WBITS:
            raise httpx.DecodingError(f"unsupported Content-Encoding {coding.decode('latin-1')!r}")
        content = _inflate(content, coding, limit)
    return content


#: zlib's window bits per coding: gzip framing, or the zlib framing "deflate" should have.
_WBITS: Final = {b"gzip": 16 + zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS, b"deflate": 0}


def _inflate(content: bytes, coding: bytes, limit: int) -> bytes:
    wbits = _WBITS[coding]
    if coding == b"deflate":
        # Some servers send raw deflate for "deflate" (as httpx's decoder allows for).
        wbits = zlib.MAX_WBITS if content[:1] == b"\x78" else -zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    try:
        decoded = decoder.decompress(content, limit + 1)
        if len(decoded) > limit or decoder.unconsumed_tail:
            raise BodyTooLargeError(limit)
        decoded += decoder.flush()
    except zlib.error as exc:
        raise httpx.DecodingError(f"{coding.decode()} body does not decode: {exc}") from exc
    if not decoder.eof:
        raise httpx.DecodingError(f"{coding.decode()} body is truncated")
    return decoded

"""The Letta client: the records the exporter reads, over one pooled, retrying httpx client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from types import TracebackType
from typing import Final, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict

from .. import __version__
from .._singleflight import SingleFlight
from ..errors import RecordInvalidError, SourceHTTPError, SourceResponseError
from ..models import (
    Agent,
    ProviderTrace,
    Run,
    RunMetrics,
    Step,
    StepMetrics,
    parse_record,
    parse_trace_body,
)
from ._discovery import Discovery, DiscoveryMode
from ._http import Requester, safe_url
from ._retry import RetryPolicy, SourceStats
from ._transport import LeanTransport
from ._types import DiscoveredStep, StepFilter

__all__ = ["USER_AGENT", "LettaClient"]

_logger = logging.getLogger(__name__)

USER_AGENT: Final = f"letta-otel-exporter/{__version__}"
#: Agents remembered by :meth:`LettaClient.get_agent` (their names rarely change).
_AGENT_CACHE_SIZE: Final = 1024
_HEALTH_PATH: Final = "/v1/health/"

M = TypeVar("M", bound=BaseModel)


class _Health(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    version: str | None = None
    status: str | None = None


class LettaClient:
    """Reads steps, runs, agents and provider traces from a Letta server.

    Every request goes through one semaphore (``concurrency`` in flight at most) and one retry
    policy; failures surface as :class:`~exporter.errors.SourceError` subclasses whose messages
    name the URL and status, never the API key.

    Args:
        http: the httpx client to use (base URL, auth headers, timeouts, pool). The
            ``LettaClient`` owns it from now on and closes it in :meth:`aclose`.
        retry: how failed calls are retried.
        concurrency: requests in flight at most.
        page_size: records asked per list page.
        discovery: how steps are found: ``auto`` probes the server once.
        stop: set on shutdown; it interrupts retry waits.
        lean: the lean transport ``http`` sends through, if it does: plain GETs (one per
            trace) then go to it directly, without building httpx request objects.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        concurrency: int = 8,
        page_size: int = 50,
        discovery: Literal["auto", "steps", "runs"] = "auto",
        stop: asyncio.Event | None = None,
        lean: LeanTransport | None = None,
    ) -> None:
        self._http = http
        self._requester = Requester(
            http, retry=retry, concurrency=concurrency, stop=stop, lean=lean
        )
        self._discovery = Discovery(self._requester, page_size=page_size, mode=discovery)
        self._agents: SingleFlight[str, Agent | None] = SingleFlight(max_size=_AGENT_CACHE_SIZE)

    # ------------------------------------------------------------------ lifecycle
    @property
    def stats(self) -> SourceStats:
        """Live request counters (requests, retries, failures, ...) for metrics."""
        return self._requester.stats

    @property
    def base_url(self) -> str:
        """The Letta base URL, safe to print."""
        return safe_url(self._http.base_url)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> LettaClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ discovery
    async def discovery_mode(self) -> DiscoveryMode:
        """``steps`` or ``runs``: probes ``GET /v1/steps/`` once (unless forced) and logs why."""
        return await self._discovery.mode()

    def discover(
        self, filt: StepFilter, *, resume: str | None = None
    ) -> AsyncIterator[DiscoveredStep]:
        """Every step matching ``filt``, oldest first, lazily.

        Args:
            filt: which steps.
            resume: a position from an earlier :class:`DiscoveredStep`; start right after it.

        Raises:
            SourceError: Letta failed after retries, or ``resume`` is not a position.
        """
        return self._discovery.discover(filt, resume=resume)

    def list_run_steps(self, run_id: str, *, after: str | None = None) -> AsyncIterator[Step]:
        """A run's steps, oldest first, after step ``after`` when given."""
        return self._discovery.list_run_steps(run_id, after=after)

    def list_runs(self, filt: StepFilter, *, after: Run | None = None) -> AsyncIterator[Run]:
        """Runs of the filter's agents created in its time window, oldest first.

        Args:
            filt: agents and time window.
            after: start right after this run (a page of runs costs one request, a run one).
        """
        return self._discovery.list_runs(filt, after=after)

    # ------------------------------------------------------------------ records
    async def get_trace(self, step_id: str) -> ProviderTrace | None:
        """The step's provider trace; ``None`` when Letta has none (yet): it answers 200 ``null``
        (or 404 for a step deleted since it was listed).

        Raises:
            RecordInvalidError: the body is not a ProviderTrace: a field of the wrong type, or
                not JSON at all (truncated, not UTF-8, nested too deeply), or a body too large or
                not decodable. Either way it is this step's record that is bad, not the server:
                the error carries ``step_id``.
        """
        try:
            # 404: the step is gone (deleted since it was listed): no trace, like null.
            raw = await self._requester.get(f"/v1/steps/{step_id}/trace", missing_ok=True)
        except SourceResponseError as exc:
            # Too large, or compressed wrongly: the same bytes would come again.
            raise RecordInvalidError(
                "ProviderTrace", None, None, exc.message, step_id=step_id
            ) from exc
        if raw is None:
            return None
        try:
            return parse_trace_body(raw)
        except RecordInvalidError as exc:
            raise RecordInvalidError(
                exc.kind, exc.record_id, exc.field, exc.message, step_id=step_id
            ) from exc

    async def get_step(self, step_id: str) -> Step:
        """One step (a 404 is an error: the caller knows the step exists)."""
        return await self._get_record(f"/v1/steps/{step_id}", Step)

    async def get_step_metrics(self, step_id: str) -> StepMetrics | None:
        """The step's timings; ``None`` when Letta has none (404)."""
        return await self._requester.get_parsed(
            f"/v1/steps/{step_id}/metrics", _parser(StepMetrics), missing_ok=True
        )

    async def get_run(self, run_id: str) -> Run:
        """One run (a 404 is an error)."""
        return await self._get_record(f"/v1/runs/{run_id}", Run)

    async def get_run_metrics(self, run_id: str) -> RunMetrics | None:
        """The run's timings; ``None`` when Letta has none (404)."""
        return await self._requester.get_parsed(
            f"/v1/runs/{run_id}/metrics", _parser(RunMetrics), missing_ok=True
        )

    async def get_agent(self, agent_id: str) -> Agent | None:
        """The agent (for its name and tags), cached; ``None`` when it does not exist (404).

        Concurrent calls for one id share a single request.
        """
        return await self._agents.get(agent_id, partial(self._load_agent, agent_id))

    async def _load_agent(self, agent_id: str) -> Agent | None:
        return await self._requester.get_parsed(
            f"/v1/agents/{agent_id}", _parser(Agent), missing_ok=True
        )

    async def check(self) -> str:
        """Ask Letta whether it is there and the key works; say what was found, in one line.

        Raises:
            SourceHTTPError: an error status (401: the API key was refused, or is needed).
            SourceConnectionError: Letta cannot be reached.
        """
        version = "(version unknown)"
        try:
            health = await self._requester.get_parsed(
                _HEALTH_PATH, _parser(_Health), missing_ok=True
            )
        except (SourceHTTPError, SourceResponseError, RecordInvalidError) as exc:
            # The version is a nicety; reachability and the key are judged by the calls below.
            _logger.debug("no version from %s: %s", _HEALTH_PATH, exc)
        else:
            if health is not None and health.version:
                version = health.version
        mode = await self.discovery_mode()
        # The health route is open even on a secured server: make one authenticated call too.
        # In auto mode the probe already was one (when it worked) unless it fell back to runs.
        if mode == "runs":
            await self._requester.get("/v1/runs/", {"limit": 1, "order": "asc"})
        elif self._discovery.reason == "set by the discovery setting":
            await self._requester.get("/v1/steps/", {"limit": 1, "order": "asc"})
        return (
            f"Letta {version} at {self.base_url} is reachable; "
            f"step discovery: {mode} ({self._discovery.reason})"
        )

    async def _get_record(self, path: str, model: type[M]) -> M:
        record = await self._requester.get_parsed(path, _parser(model))
        assert record is not None  # get_parsed answers None only with missing_ok
        return record


def _parser(model: type[M]) -> Callable[[bytes], M]:
    """``parse_record`` bound to a model: parses the body bytes straight into it."""
    return partial(parse_record, model)

"""The settings' field groups, one job each, combined by :class:`exporter.settings.Settings`.

Each group holds its fields, the validators of those fields and the values derived from them
alone; what spans groups (the cross-checks, loading, error messages) stays with the model. The
model lists the groups last first: pydantic orders fields from the deepest base up, so the fields
keep the order of the README table and the example TOML.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from ._settings_parse import (
    DATABASE_URL,
    HOST_PORT,
    RELATIVE,
    StrList,
    env,
    parse_key_value_list,
    parse_size,
    parse_time,
    split_list,
)
from .errors import ConfigError

__all__ = [
    "DEFAULT_GRPC_ENDPOINT",
    "DEFAULT_HTTP_ENDPOINT",
    "ConversionFields",
    "DatabaseFields",
    "DeliveryFields",
    "LettaFields",
    "MetricsFields",
    "RunningFields",
    "SelectionFields",
    "SocketFields",
]

DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318"


def lowercase(value: Any) -> Any:
    """Choices are matched without regard to case or surrounding blanks."""
    return value.strip().lower() if isinstance(value, str) else value


_KeyValues = TypeVar("_KeyValues", SecretStr, str)


def check_key_value_list(value: _KeyValues | None) -> _KeyValues | None:
    """Check a ``key=value,...`` setting, so a typo fails at start-up (and in `check`), not at the
    first export."""
    if value is not None:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        try:
            parse_key_value_list(text, setting="")
        except ConfigError as exc:
            raise ValueError(exc.message) from None  # the message never repeats the text
    return value


def check_octal_mode(value: Any) -> str:
    """Permission bits as four octal digits; the owner (the exporter) must read and write."""
    # TOML gives 0o660 as the integer 432; flags and the environment give text ("0660").
    if isinstance(value, bool):
        raise ValueError("expected permission bits in octal, e.g. 0660")
    if isinstance(value, int):
        bits = value
    elif isinstance(value, str) and re.fullmatch(r"\s*(0o?)?[0-7]{1,4}\s*", value, re.I):
        bits = int(value.strip().lower().removeprefix("0o") or "0", 8)
    else:
        raise ValueError("expected permission bits in octal, e.g. 0660")
    if not 0 <= bits <= 0o777:
        raise ValueError("expected permission bits in octal from 0000 to 0777, e.g. 0660")
    if bits & 0o600 != 0o600:
        raise ValueError("the owner (the exporter) needs read and write: e.g. 0660 or 0600")
    return f"{bits:04o}"


def check_database_url(value: SecretStr | None) -> SecretStr | None:
    """A PostgreSQL URL or libpq key=value string; the message never repeats the value (it holds
    a password)."""
    if value is None:
        return None
    text = value.get_secret_value().strip()
    if not text:
        return None
    if "://" in text:
        if not DATABASE_URL.match(text):
            raise ValueError(
                "expected postgresql://user:password@host:5432/dbname "
                "(or a postgresql+driver:// URL as Letta takes it)"
            )
        try:
            port = urlsplit(text).port
        except ValueError:
            raise ValueError("the URL's port is not a number from 1 to 65535") from None
        del port
    elif not re.match(r"^\s*\w+\s*=", text):
        raise ValueError(
            "expected postgresql://user:password@host:5432/dbname or host=... dbname=..."
        )
    return SecretStr(text)


class LettaFields(BaseModel):
    """Reaching the Letta API: where, as whom, and how hard to push it."""

    letta_base_url: str = Field(
        "http://localhost:8283",
        validation_alias=env("LETTA_BASE_URL"),
        description="Base URL of the Letta server.",
    )
    letta_api_key: SecretStr | None = Field(
        None,
        validation_alias=env("LETTA_API_KEY"),
        description="Sent as 'Authorization: Bearer <key>' (Letta Cloud, or a --secure server).",
    )
    project_id: str | None = Field(
        None, description="Letta project: sent as X-Project-Id and used as a step filter."
    )
    letta_user_id: str | None = Field(
        None, description="Self-hosted only: the 'user_id' header choosing the acting user."
    )
    request_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of each Letta call.")
    concurrency: int = Field(8, ge=1, le=64, description="Letta requests in flight at most.")
    max_retries: int = Field(
        5, ge=0, le=100, description="Retries of a failed Letta call (429, 5xx, network)."
    )
    retry_backoff_initial_seconds: float = Field(0.5, gt=0, description="First retry delay.")
    retry_backoff_max_seconds: float = Field(30.0, gt=0, description="Longest retry delay.")
    page_size: int = Field(50, ge=1, le=1000, description="Steps or runs asked per page.")
    discovery: Literal["auto", "steps", "runs"] = Field(
        "auto",
        description="How steps are found: GET /v1/steps/, through the runs, or auto-detect.",
    )
    trace_settle_seconds: float = Field(
        300.0,
        ge=0,
        description="How long a step's missing (null) trace is asked again before it is "
        "reported as 'no trace'.",
    )

    @field_validator("letta_base_url")
    @classmethod
    def _urls(cls, value: str) -> str:
        value = value.strip()
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http:// or https:// URL")
        return value


class SelectionFields(BaseModel):
    """What to export: the source and the filters on its steps."""

    source: Literal["letta", "file", "postgres"] = Field(
        "letta",
        description="Read from the Letta API, a file of ProviderTraces, or Letta's PostgreSQL.",
    )
    input: Path | None = Field(
        None, description="The file of ProviderTraces (JSON or JSON lines) for source=file."
    )
    since: datetime | None = Field(
        None, description="Export steps created after this time (ISO 8601 or relative: 24h)."
    )
    until: datetime | None = Field(None, description="Export steps created before this time.")
    agent_ids: StrList = Field(
        default_factory=list, description="Only these agents (comma-separated in env)."
    )
    model: str | None = Field(None, description="Only steps of this model.")
    limit: int | None = Field(None, ge=1, description="One-shot export: at most this many traces.")

    _since_spec: str | None = PrivateAttr(None)
    _until_spec: str | None = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_relative_since(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        since = data.get("since") if isinstance(data, dict) else None
        until = data.get("until") if isinstance(data, dict) else None
        settings = handler(data)
        if isinstance(since, str) and RELATIVE.match(since):
            settings._since_spec = since.strip().lower()
        if isinstance(until, str) and RELATIVE.match(until):
            settings._until_spec = until.strip().lower()
        return settings

    @field_validator("agent_ids", mode="before")
    @classmethod
    def _split_agent_ids(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("since", "until", mode="before")
    @classmethod
    def _times(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if isinstance(value, str | datetime):
            return parse_time(value)
        return value

    @field_validator("source", mode="before")
    @classmethod
    def _lower_source(cls, value: Any) -> Any:
        return lowercase(value)

    @property
    def since_spec(self) -> str | None:
        """``since`` as it was given when it was relative (``24h``): the same words every run,
        where the time they stand for moves on (a checkpoint stream keys on this)."""
        return self._since_spec

    @property
    def until_spec(self) -> str | None:
        """``until`` as given when it was relative (see :attr:`since_spec`)."""
        return self._until_spec


class SocketFields(BaseModel):
    """The Unix socket Letta pushes traces to, and the journal that keeps them until shipped."""

    socket: Path | None = Field(
        None,
        description="run: also listen on this Unix socket for the traces Letta pushes "
        "(LETTA_TELEMETRY_PROVIDER_TRACE_BACKEND=socket, TELEMETRY_SOCKET=the same path).",
    )
    socket_mode: str = Field(
        "0660", description="Permission bits of the socket file, octal (only its group writes)."
    )
    journal_dir: Path | None = Field(
        None,
        description="Where received socket records are journaled (default: beside the state "
        "file, <state_path>.journal).",
    )
    journal_max_bytes: int = Field(
        2 << 30,
        ge=1 << 20,
        description="Unshipped bytes the journal holds at most; past it records are refused.",
    )
    journal_commit_ms: float = Field(
        5.0, ge=0, le=1000, description="Milliseconds a journal commit waits to batch fsyncs."
    )
    socket_idle_timeout: float = Field(
        60.0, gt=0, description="Seconds a socket connection may stay silent mid-record."
    )
    socket_max_record_bytes: int = Field(
        128 << 20, ge=1024, description="The longest record (one JSON line) taken, bytes."
    )

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: Any) -> Any:
        return check_octal_mode(value)

    @field_validator("journal_max_bytes", "socket_max_record_bytes", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @property
    def socket_mode_bits(self) -> int:
        """``socket_mode`` as permission bits (``0o660``)."""
        return int(self.socket_mode, 8)


class DatabaseFields(BaseModel):
    """Reading Letta's PostgreSQL directly (source=postgres)."""

    database_url: SecretStr | None = Field(
        None,
        validation_alias=env("LETTA_EXPORTER_DATABASE_URL", "LETTA_PG_URI"),
        description="Letta's PostgreSQL: postgresql://user:password@host:5432/letta.",
    )
    database_poll_seconds: float = Field(
        5.0, gt=0, description="run --source postgres: seconds between reads of new rows."
    )
    database_statement_timeout: float = Field(
        60.0, gt=0, description="Seconds any one database query may run."
    )
    database_connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for the database connection."
    )
    database_overlap_seconds: float = Field(
        30.0,
        ge=0,
        description="Seconds behind the database clock re-read for rows committed late.",
    )
    database_key_page: int = Field(
        20_000, ge=100, le=1_000_000, description="Row keys per key query (one table scan each)."
    )
    database_batch: int = Field(
        500, ge=1, le=10_000, description="Rows fetched with their steps and runs per query."
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        return check_database_url(value)


class ConversionFields(BaseModel):
    """How a trace becomes spans: content, redaction, resource, prices."""

    content: Literal["none", "full", "raw"] = Field(
        "none",
        description="Prompt/completion content on spans: none, full (GenAI message "
        "attributes) or raw (request/response JSON).",
    )
    content_max_bytes: int = Field(
        16384, ge=256, description="Per-attribute size limit for content attributes."
    )
    redact_patterns: StrList = Field(
        default_factory=list, description="Regular expressions blanked out of content."
    )
    join_letta_traces: bool = Field(
        False, description="Put spans in the Letta server's own OTel trace when the step has one."
    )
    service_name: str = Field("letta", validation_alias=env("OTEL_SERVICE_NAME"), min_length=1)
    resource_attributes: str | None = Field(None, validation_alias=env("OTEL_RESOURCE_ATTRIBUTES"))

    prices_file: Path | None = Field(
        None, description="A price table (TOML or JSON) consulted before the price library."
    )

    @field_validator("redact_patterns", mode="before")
    @classmethod
    def _split_redact_patterns(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("redact_patterns")
    @classmethod
    def _compile_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
        return value

    @field_validator("resource_attributes")
    @classmethod
    def _check_resource_attributes(cls, value: str | None) -> str | None:
        return check_key_value_list(value)

    @field_validator("content", mode="before")
    @classmethod
    def _lower_content(cls, value: Any) -> Any:
        return lowercase(value)

    @field_validator("prices_file")
    @classmethod
    def _prices_file(cls, value: Path | None) -> Path | None:
        # Read here, so a bad table is one line at start-up (and in `check`), exit 2.
        if value is None:
            return None
        from .prices import load_price_table  # the price parser: only when a file is given

        try:
            load_price_table(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return value

    def resource_attribute_dict(self) -> dict[str, str]:
        """``OTEL_RESOURCE_ATTRIBUTES`` as a dict."""
        if not self.resource_attributes:
            return {}
        return parse_key_value_list(self.resource_attributes, setting="OTEL_RESOURCE_ATTRIBUTES")


class DeliveryFields(BaseModel):
    """Where spans go: the sink, the OTLP transport, batching and the export deadline."""

    sink: Literal["auto", "otlp", "file", "console"] = Field(
        "auto",
        description="auto: OTLP when an OTLP endpoint is set, else the OTLP JSON lines file.",
    )
    output: Path = Field(
        Path("letta-traces.otlp.jsonl"), description="Where sink=file writes OTLP JSON lines."
    )
    otlp_protocol: Literal["grpc", "http/protobuf"] = Field(
        "http/protobuf",
        validation_alias=env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    )
    otlp_endpoint: str | None = Field(None, validation_alias=env("OTEL_EXPORTER_OTLP_ENDPOINT"))
    otlp_traces_endpoint: str | None = Field(
        None, validation_alias=env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    otlp_headers: SecretStr | None = Field(
        None,
        validation_alias=env("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
    )
    otlp_compression: Literal["none", "gzip"] = Field(
        "none",
        validation_alias=env(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"
        ),
    )
    otlp_timeout_ms: int = Field(
        10000,
        gt=0,
        validation_alias=env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        description="Per-export timeout in milliseconds, as the OTel specification defines it.",
    )
    otlp_insecure: bool | None = Field(
        None,
        validation_alias=env("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"),
    )
    otlp_certificate: Path | None = Field(
        None,
        validation_alias=env(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"
        ),
    )
    otlp_client_key: Path | None = Field(
        None,
        validation_alias=env(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"
        ),
    )
    otlp_client_certificate: Path | None = Field(
        None,
        validation_alias=env(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
        ),
    )
    batch_size: int = Field(512, ge=1, le=10000, description="Spans per export request.")
    batch_max_bytes: int = Field(
        4194304,
        ge=1024,
        description="Largest encoded export request in bytes: a batch over it is sent in "
        "smaller parts (a single larger span is sent alone).",
    )
    export_deadline_seconds: float = Field(
        120.0,
        gt=0,
        description="One-shot export: how long a failing collector is retried before giving up.",
    )

    @field_validator("otlp_headers")
    @classmethod
    def _check_headers(cls, value: SecretStr | None) -> SecretStr | None:
        return check_key_value_list(value)

    @field_validator("otlp_endpoint", "otlp_traces_endpoint")
    @classmethod
    def _otlp_urls(cls, value: str | None) -> str | None:
        # The OTLP convention: a URL, or host:port whose transport security otlp_insecure picks.
        if value is None:
            return None
        value = value.strip()
        if not (re.match(r"^https?://[^/\s]+", value) or HOST_PORT.match(value)):
            raise ValueError(
                "expected an http:// or https:// URL, or host:port (TLS unless otlp_insecure)"
            )
        return value

    @field_validator("otlp_protocol", "otlp_compression", "sink", mode="before")
    @classmethod
    def _lower_delivery(cls, value: Any) -> Any:
        return lowercase(value)

    @property
    def effective_sink(self) -> Literal["otlp", "file", "console"]:
        """The sink in use: ``auto`` means OTLP when an endpoint is configured, else the file."""
        if self.sink != "auto":
            return self.sink
        return "otlp" if (self.otlp_endpoint or self.otlp_traces_endpoint) else "file"

    @property
    def otlp_traces_url(self) -> str:
        """The traces endpoint as the OTel specification resolves it for the chosen protocol.

        The signal-specific endpoint is used as is; the generic one gets ``/v1/traces`` appended
        for HTTP; the defaults are ``localhost:4317`` (gRPC) and ``localhost:4318`` (HTTP).
        """
        if self.otlp_traces_endpoint:
            return self._with_scheme(self.otlp_traces_endpoint)
        if self.otlp_protocol == "grpc":
            return self.otlp_endpoint or DEFAULT_GRPC_ENDPOINT
        base = self._with_scheme(self.otlp_endpoint or DEFAULT_HTTP_ENDPOINT).rstrip("/")
        return f"{base}/v1/traces"

    def _with_scheme(self, endpoint: str) -> str:
        # gRPC takes host:port as it is (the sink applies otlp_insecure); HTTP needs a URL.
        if self.otlp_protocol == "grpc" or re.match(r"^https?://", endpoint):
            return endpoint
        return ("http://" if self.otlp_insecure else "https://") + endpoint

    @property
    def otlp_metrics_url(self) -> str:
        """The metrics endpoint beside the traces one: the generic endpoint with ``/v1/metrics``
        for HTTP (a traces-only URL has its ``/v1/traces`` swapped by the metrics transport);
        the same ``host:port`` for gRPC."""
        if self.otlp_protocol == "grpc":
            return self.otlp_traces_url
        if self.otlp_endpoint and not self.otlp_traces_endpoint:
            return self._with_scheme(self.otlp_endpoint).rstrip("/") + "/v1/metrics"
        return self.otlp_traces_url

    def otlp_header_dict(self) -> dict[str, str]:
        """OTLP headers as a dict (they may hold API keys: never log the result)."""
        if self.otlp_headers is None:
            return {}
        return parse_key_value_list(
            self.otlp_headers.get_secret_value(), setting="OTEL_EXPORTER_OTLP_HEADERS"
        )


class MetricsFields(BaseModel):
    """GenAI metrics sent beside the spans."""

    metrics: bool | None = Field(
        None,
        description="GenAI metrics over OTLP: on by default with the OTLP sink, off otherwise.",
    )
    metrics_temporality: Literal["cumulative", "delta", "lowmemory"] = Field(
        "cumulative",
        validation_alias=env(
            "LETTA_EXPORTER_METRICS_TEMPORALITY",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        ),
        description="cumulative (Prometheus), delta or lowmemory.",
    )
    metrics_agent_attribute: bool = Field(
        False, description="Add the agent to every metric series (one series per agent)."
    )
    metrics_interval_seconds: float = Field(
        60.0, gt=0, description="Seconds between periodic metric exports."
    )

    @field_validator("metrics_temporality", mode="before")
    @classmethod
    def _lower_temporality(cls, value: Any) -> Any:
        return lowercase(value)


class RunningFields(BaseModel):
    """The process itself: checkpoint, dead letters, polling, sharding, health and logs."""

    state_path: Path = Field(
        Path("letta-otel-exporter.state.json"), description="The checkpoint file."
    )
    dead_letter_path: Path = Field(
        Path("letta-otel-exporter.dead-letter.jsonl"),
        description="Where records that cannot be converted or delivered are written.",
    )
    poll_interval_seconds: float = Field(15.0, gt=0, description="Sidecar: time between polls.")
    shutdown_timeout_seconds: float = Field(
        30.0, gt=0, description="Sidecar: longest time SIGTERM waits for in-flight work."
    )
    shard: str | None = Field(
        None, description="'i/n': this replica exports the steps whose id hashes to shard i of n."
    )
    health_host: str = Field("0.0.0.0", description="Sidecar: /healthz, /readyz, /metrics host.")  # noqa: S104
    health_port: int = Field(9464, ge=0, le=65535, description="Sidecar: their port (0: off).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("shard")
    @classmethod
    def _shard(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
            raise ValueError("expected 'i/n' with 0 <= i < n, e.g. 0/3")
        return f"{int(match.group(1))}/{int(match.group(2))}"

    @property
    def metrics_ledger_path(self) -> Path:
        """The GenAI metrics' counted-once ledger, beside the state file, one per shard (the
        processes of ``export --workers`` share the state file, not the ledger)."""
        name = self.state_path.name + ".metrics-ledger"
        if (spec := self.shard_spec) is not None:
            name += f".shard-{spec[0]}-of-{spec[1]}"
        return self.state_path.with_name(name)

    @property
    def shard_spec(self) -> tuple[int, int] | None:
        """``(index, count)`` of this replica's shard, or ``None`` when not sharded."""
        if self.shard is None:
            return None
        index, count = self.shard.split("/")
        return int(index), int(count)

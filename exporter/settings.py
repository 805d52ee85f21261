"""The exporter's settings: one model, read once by the CLI and passed down.

Precedence, highest first:

1. command-line flags (``Settings.load(**flags)``);
2. environment variables: ``LETTA_BASE_URL`` and ``LETTA_API_KEY`` (shared with Letta's own
   clients), the standard ``OTEL_*`` variables (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``
   and ``OTEL_EXPORTER_OTLP_[TRACES_]*``, the signal-specific one winning), and the exporter's own
   under ``LETTA_EXPORTER_`` (``LETTA_EXPORTER_CONCURRENCY`` for ``concurrency``), a prefix that
   does not clash with the Letta server's own ``LETTA_*`` settings;
3. a TOML file (``--config`` or ``LETTA_EXPORTER_CONFIG``), keys as the field names below;
   ``config/exporter.example.toml`` documents every one;
4. the defaults below.

A few settings share a variable with a neighbour: ``database_url`` falls back to ``LETTA_PG_URI``
(the Letta server's own database URL, so one deployment can share it), and
``metrics_temporality`` to ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``.

A bad value is a :class:`~exporter.errors.ConfigError` whose one line names the setting and what
is allowed. Secrets (``letta_api_key``, ``otlp_headers``, ``database_url``) are ``SecretStr``:
they print as ``**********`` and are never logged or echoed in an error.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    AliasChoices,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError

__all__ = ["ENV_PREFIX", "Settings", "parse_key_value_list", "parse_size", "parse_time"]

ENV_PREFIX: Final = "LETTA_EXPORTER_"
#: Environment variable naming the TOML config file.
CONFIG_ENV: Final = "LETTA_EXPORTER_CONFIG"

DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318"
#: The sidecar's poll interval when the socket is on and none is set: the poll only reconciles.
SOCKET_POLL_INTERVAL_SECONDS: Final = 60.0

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_HOST_PORT = re.compile(r"^[A-Za-z0-9._-]+:\d{1,5}(/\S*)?$|^\[[0-9A-Fa-f:]+\]:\d{1,5}(/\S*)?$")


def parse_time(value: str | datetime, *, now: datetime | None = None) -> datetime:
    """Read an ISO 8601 time or a relative one (``90s``, ``15m``, ``24h``, ``7d``, ``2w`` ago).

    Naive times are UTC, as everywhere in Letta.

    Raises:
        ValueError: the text is neither.
    """
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if match := _RELATIVE.match(value):
        amount, unit = float(match.group(1)), match.group(2).lower()
        return (now or datetime.now(UTC)) - timedelta(seconds=amount * _UNITS[unit])
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            "expected an ISO 8601 time (2026-01-31T12:00:00Z) or a relative one (30m, 24h, 7d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: A ``%`` not followed by two hex digits: ``unquote`` would keep it as is, silently.
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_key_value_list(text: str, *, setting: str) -> dict[str, str]:
    """Parse the OTel ``key1=value1,key2=value2`` format (values URL-encoded).

    Used for ``OTEL_EXPORTER_OTLP_HEADERS`` and ``OTEL_RESOURCE_ATTRIBUTES``. The error never
    repeats the text: header values are secrets.

    Raises:
        ConfigError: a member is not ``key=value``, or has a bad ``%``-escape.
    """
    result: dict[str, str] = {}
    for index, item in enumerate(text.split(",")):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                setting, f"item {index + 1} is not key=value (expected key1=value1,key2=value2)"
            )
        if _BAD_ESCAPE.search(item) is not None:
            raise ConfigError(
                setting, f"item {index + 1} has a bad %-escape (expected % and two hex digits)"
            )
        try:
            result[unquote(key.strip(), errors="strict")] = unquote(val.strip(), errors="strict")
        except UnicodeDecodeError:
            raise ConfigError(
                setting, f"item {index + 1} has %-escapes that are not UTF-8"
            ) from None
    return result


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DATABASE_URL: Final = re.compile(r"^postgres(ql)?(\+[A-Za-z0-9_]+)?://\S+$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Read a size in bytes: ``134217728``, ``128MiB``, ``2GiB``, ``512K`` (units of 1024).

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError("expected a size in bytes, or with a unit: 512MiB, 2GiB")
    unit = (match.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _split_list(value: Any) -> Any:
    # Lists arrive as JSON arrays from TOML and flags, and as "a,b,c" from the environment.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


StrList = Annotated[list[str], NoDecode]


def _env(*names: str) -> AliasChoices:
    # Environment names only. The field's own name must not be a choice: pydantic-settings would
    # then also read it as a bare variable (a stray SERVICE_NAME or OTLP_ENDPOINT in a container
    # would change the settings). Flags and TOML keys still use the field name (validate_by_name).
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Everything the exporter can be told. See the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        case_sensitive=False,
        validate_default=True,
        # The OTel specification: an empty variable means the same as an unset one.
        env_ignore_empty=True,
    )

    # --- Letta -----------------------------------------------------------------------------
    letta_base_url: str = Field(
        "http://localhost:8283",
        validation_alias=_env("LETTA_BASE_URL"),
        description="Base URL of the Letta server.",
    )
    letta_api_key: SecretStr | None = Field(
        None,
        validation_alias=_env("LETTA_API_KEY"),
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

    # --- what to export ------------------------------------------------------------------
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

    # --- the socket (run: Letta pushes each trace) ----------------------------------------
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

    # --- the database (source=postgres) ---------------------------------------------------
    database_url: SecretStr | None = Field(
        None,
        validation_alias=_env("LETTA_EXPORTER_DATABASE_URL", "LETTA_PG_URI"),
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

    # --- conversion ----------------------------------------------------------------------
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
    service_name: str = Field("letta", validation_alias=_env("OTEL_SERVICE_NAME"), min_length=1)
    resource_attributes: str | None = Field(None, validation_alias=_env("OTEL_RESOURCE_ATTRIBUTES"))

    prices_file: Path | None = Field(
        None, description="A price table (TOML or JSON) consulted before the price library."
    )

    # --- delivery ------------------------------------------------------------------------
    sink: Literal["auto", "otlp", "file", "console"] = Field(
        "auto",
        description="auto: OTLP when an OTLP endpoint is set, else the OTLP JSON lines file.",
    )
    output: Path = Field(
        Path("letta-traces.otlp.jsonl"), description="Where sink=file writes OTLP JSON lines."
    )
    otlp_protocol: Literal["grpc", "http/protobuf"] = Field(
        "http/protobuf",
        validation_alias=_env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    )
    otlp_endpoint: str | None = Field(None, validation_alias=_env("OTEL_EXPORTER_OTLP_ENDPOINT"))
    otlp_traces_endpoint: str | None = Field(
        None, validation_alias=_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    otlp_headers: SecretStr | None = Field(
        None,
        validation_alias=_env("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
    )
    otlp_compression: Literal["none", "gzip"] = Field(
        "none",
        validation_alias=_env(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"
        ),
    )
    otlp_timeout_ms: int = Field(
        10000,
        gt=0,
        validation_alias=_env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        description="Per-export timeout in milliseconds, as the OTel specification defines it.",
    )
    otlp_insecure: bool | None = Field(
        None,
        validation_alias=_env("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"),
    )
    otlp_certificate: Path | None = Field(
        None,
        validation_alias=_env(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"
        ),
    )
    otlp_client_key: Path | None = Field(
        None,
        validation_alias=_env(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"
        ),
    )
    otlp_client_certificate: Path | None = Field(
        None,
        validation_alias=_env(
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

    # --- GenAI metrics --------------------------------------------------------------------
    metrics: bool | None = Field(
        None,
        description="GenAI metrics over OTLP: on by default with the OTLP sink, off otherwise.",
    )
    metrics_temporality: Literal["cumulative", "delta", "lowmemory"] = Field(
        "cumulative",
        validation_alias=_env(
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

    # --- running -------------------------------------------------------------------------
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

    _since_spec: str | None = PrivateAttr(None)
    _until_spec: str | None = PrivateAttr(None)

    # ------------------------------------------------------------------------------------
    @model_validator(mode="wrap")
    @classmethod
    def _remember_relative_since(
        cls, data: Any, handler: ModelWrapValidatorHandler[Settings]
    ) -> Settings:
        since = data.get("since") if isinstance(data, dict) else None
        until = data.get("until") if isinstance(data, dict) else None
        settings = handler(data)
        if isinstance(since, str) and _RELATIVE.match(since):
            settings._since_spec = since.strip().lower()
        if isinstance(until, str) and _RELATIVE.match(until):
            settings._until_spec = until.strip().lower()
        return settings

    @field_validator("agent_ids", "redact_patterns", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("redact_patterns")
    @classmethod
    def _compile_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
        return value

    @field_validator("otlp_headers", "resource_attributes")
    @classmethod
    def _key_value_lists(cls, value: SecretStr | str | None) -> SecretStr | str | None:
        # Checked here so a typo fails at start-up (and in `check`), not at the first export.
        if value is not None:
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            try:
                parse_key_value_list(text, setting="")
            except ConfigError as exc:
                raise ValueError(exc.message) from None  # the message never repeats the text
        return value

    @field_validator("since", "until", mode="before")
    @classmethod
    def _times(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if isinstance(value, str | datetime):
            return parse_time(value)
        return value

    @field_validator("letta_base_url")
    @classmethod
    def _urls(cls, value: str) -> str:
        value = value.strip()
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("otlp_endpoint", "otlp_traces_endpoint")
    @classmethod
    def _otlp_urls(cls, value: str | None) -> str | None:
        # The OTLP convention: a URL, or host:port whose transport security otlp_insecure picks.
        if value is None:
            return None
        value = value.strip()
        if not (re.match(r"^https?://[^/\s]+", value) or _HOST_PORT.match(value)):
            raise ValueError(
                "expected an http:// or https:// URL, or host:port (TLS unless otlp_insecure)"
            )
        return value

    @field_validator(
        "otlp_protocol",
        "otlp_compression",
        "content",
        "sink",
        "source",
        "metrics_temporality",
        mode="before",
    )
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

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

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: Any) -> Any:
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

    @field_validator("journal_max_bytes", "socket_max_record_bytes", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never repeats the value: it holds a password.
        if value is None:
            return None
        text = value.get_secret_value().strip()
        if not text:
            return None
        if "://" in text:
            if not _DATABASE_URL.match(text):
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

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")
        if self.source == "file" and self.input is None:
            raise ValueError("source=file needs input (a file of ProviderTraces, or - for stdin)")
        if self.source == "postgres":
            if self.database_url is None:
                raise ValueError(
                    "source=postgres needs database_url (--database-url, "
                    "LETTA_EXPORTER_DATABASE_URL or LETTA_PG_URI)"
                )
            if self.model is not None:
                raise ValueError("source=postgres has no model filter (it filters the API's steps)")
            if self.project_id is not None:
                raise ValueError(
                    "source=postgres has no project filter (project_id is for the Letta API)"
                )
        if self.metrics and self.effective_sink != "otlp":
            raise ValueError(
                f"metrics=true needs the OTLP sink (the sink is {self.effective_sink}): GenAI "
                "metrics go to the traces' collector"
            )
        if self.socket is not None and self.journal_max_bytes < self.socket_max_record_bytes:
            raise ValueError(
                "journal_max_bytes is smaller than socket_max_record_bytes: the journal could "
                "not hold one record of the largest size taken"
            )
        return self

    # ------------------------------------------------------------------------------------
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags, then the environment; :meth:`load` adds the TOML file it was given after them.
        return (init_settings, env_settings)

    @classmethod
    def load(cls, *, config_file: Path | str | None = None, **flags: Any) -> Settings:
        """Build the settings from flags, environment, TOML file and defaults.

        Args:
            config_file: the TOML file; defaults to ``$LETTA_EXPORTER_CONFIG`` when set.
            **flags: values given on the command line (``None`` means "not given").

        Raises:
            ConfigError: a value is not allowed, the file cannot be read, or an unknown
                ``LETTA_EXPORTER_*`` variable or TOML key is set (likely a typo).
        """
        path = config_file if config_file is not None else os.environ.get(CONFIG_ENV) or None
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError("config file", f"{path} does not exist or is not a file")
        _reject_unknown_env()
        given = {k: v for k, v in flags.items() if v is not None and v != () and v != []}
        try:
            # The file is passed to this one build explicitly (no state shared between loads):
            # the usual sources (flags, environment), then the TOML file below them.
            sources, init_kwargs = cls._settings_init_sources(_init_kwargs=given)
            if path is not None:
                sources = (*sources, TomlConfigSettingsSource(cls, toml_file=path))
            return cls(_build_sources=(sources, init_kwargs))
        except ValidationError as exc:
            raise _config_error(exc, flags=set(given), config_file=path) from None
        except ValueError as exc:  # TOML syntax errors surface as ValueError subclasses
            raise ConfigError(str(path or "config"), str(exc).splitlines()[0]) from None

    # --- derived values ----------------------------------------------------------------
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

    @property
    def effective_poll_interval_seconds(self) -> float:
        """The sidecar's poll interval: as set; unset, 60 s when the socket brings each trace
        at once (the poll then only reconciles what the socket missed), else the default."""
        if "poll_interval_seconds" in self.model_fields_set or self.socket is None:
            return self.poll_interval_seconds
        return SOCKET_POLL_INTERVAL_SECONDS

    @property
    def metrics_enabled(self) -> bool:
        """Whether GenAI metrics are on: as set, else on exactly when spans go over OTLP."""
        if self.metrics is not None:
            return self.metrics
        return self.effective_sink == "otlp"

    @property
    def socket_mode_bits(self) -> int:
        """``socket_mode`` as permission bits (``0o660``)."""
        return int(self.socket_mode, 8)

    @property
    def effective_journal_dir(self) -> Path:
        """The journal directory: as set, else ``<state_path>.journal`` beside the state file."""
        if self.journal_dir is not None:
            return self.journal_dir
        return self.state_path.with_name(self.state_path.name + ".journal")

    @property
    def metrics_ledger_path(self) -> Path:
        """The GenAI metrics' counted-once ledger, beside the state file, one per shard (the
        processes of ``export --workers`` share the state file, not the ledger)."""
        name = self.state_path.name + ".metrics-ledger"
        if (spec := self.shard_spec) is not None:
            name += f".shard-{spec[0]}-of-{spec[1]}"
        return self.state_path.with_name(name)

    @property
    def since_spec(self) -> str | None:
        """``since`` as it was given when it was relative (``24h``): the same words every run,
        where the time they stand for moves on (a checkpoint stream keys on this)."""
        return self._since_spec

    @property
    def until_spec(self) -> str | None:
        """``until`` as given when it was relative (see :attr:`since_spec`)."""
        return self._until_spec

    def otlp_header_dict(self) -> dict[str, str]:
        """OTLP headers as a dict (they may hold API keys: never log the result)."""
        if self.otlp_headers is None:
            return {}
        return parse_key_value_list(
            self.otlp_headers.get_secret_value(), setting="OTEL_EXPORTER_OTLP_HEADERS"
        )

    def resource_attribute_dict(self) -> dict[str, str]:
        """``OTEL_RESOURCE_ATTRIBUTES`` as a dict."""
        if not self.resource_attributes:
            return {}
        return parse_key_value_list(self.resource_attributes, setting="OTEL_RESOURCE_ATTRIBUTES")

    @property
    def shard_spec(self) -> tuple[int, int] | None:
        """``(index, count)`` of this replica's shard, or ``None`` when not sharded."""
        if self.shard is None:
            return None
        index, count = self.shard.split("/")
        return int(index), int(count)


def env_names(field: str) -> list[str]:
    """The environment variables that set ``field``, the one that wins first."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str) and c != field]
    return [f"{ENV_PREFIX}{field.upper()}"]


def _field_for(name: str) -> str | None:
    if name in Settings.model_fields:
        return name
    for field in Settings.model_fields:
        if name.upper() in env_names(field):
            return field
    return None


def _reject_unknown_env() -> None:
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} | {CONFIG_ENV}
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known:
            raise ConfigError(name, "unknown setting (see config/exporter.example.toml)")


#: Command-line flags whose name is not the field's (for error messages).
_FLAGS: Final = {
    "letta_base_url": "letta-url",
    "agent_ids": "agent-id",
    "redact_patterns": "redact",
    "poll_interval_seconds": "poll-interval",
    "shutdown_timeout_seconds": "shutdown-timeout",
    "export_deadline_seconds": "export-deadline",
}


def _origin(field: str, flags: set[str], config_file: Path | None) -> str:
    """Where a setting's value came from, in the precedence order: flag, env var, file+key."""
    if field in flags:
        return "flag --" + _FLAGS.get(field, field.replace("_", "-"))
    names = env_names(field)
    upper = {name.upper() for name in os.environ}
    for name in names:
        if name.upper() in upper:
            return name
    if config_file is not None:
        return f"{config_file}, key {field}"
    return " / ".join(names)


def _config_error(
    exc: ValidationError, *, flags: set[str] | None = None, config_file: Path | None = None
) -> ConfigError:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(p) for p in first.get("loc", ())]
    given = loc[0] if loc else ""
    if first.get("type") == "extra_forbidden":
        return ConfigError(given, "unknown setting (see config/exporter.example.toml)")
    field = _field_for(given)
    name = (
        f"{field} ({_origin(field, flags or set(), config_file)})" if field else given or "settings"
    )
    message = str(first.get("msg", "invalid value"))
    if ctx := first.get("ctx"):
        expected = ctx.get("expected")
        if expected:
            message = f"expected {expected}"
    return ConfigError(name, message.removeprefix("Value error, "))

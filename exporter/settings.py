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
from pathlib import Path
from typing import Any, Final

from pydantic import AliasChoices, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ._settings_fields import (
    DEFAULT_GRPC_ENDPOINT as DEFAULT_GRPC_ENDPOINT,
)
from ._settings_fields import (
    DEFAULT_HTTP_ENDPOINT as DEFAULT_HTTP_ENDPOINT,
)
from ._settings_fields import (
    ConversionFields,
    DatabaseFields,
    DeliveryFields,
    LettaFields,
    MetricsFields,
    RunningFields,
    SelectionFields,
    SocketFields,
)
from ._settings_parse import parse_key_value_list, parse_size, parse_time
from .errors import ConfigError

__all__ = ["ENV_PREFIX", "Settings", "parse_key_value_list", "parse_size", "parse_time"]

ENV_PREFIX: Final = "LETTA_EXPORTER_"
#: Environment variable naming the TOML config file.
CONFIG_ENV: Final = "LETTA_EXPORTER_CONFIG"

#: The sidecar's poll interval when the socket is on and none is set: the poll only reconciles.
SOCKET_POLL_INTERVAL_SECONDS: Final = 60.0


# The groups are listed last first: pydantic orders fields from the deepest base up, so this
# keeps the fields' order (Letta, selection, socket, database, conversion, delivery, metrics,
# running), which the README table and the example TOML follow.
class Settings(
    RunningFields,
    MetricsFields,
    DeliveryFields,
    ConversionFields,
    DatabaseFields,
    SocketFields,
    SelectionFields,
    LettaFields,
    BaseSettings,
):
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

    # --- derived values that span groups ------------------------------------------------

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
    def effective_journal_dir(self) -> Path:
        """The journal directory: as set, else ``<state_path>.journal`` beside the state file."""
        if self.journal_dir is not None:
            return self.journal_dir
        return self.state_path.with_name(self.state_path.name + ".journal")


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

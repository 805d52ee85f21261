"""Settings: precedence (flags > env > TOML > defaults), the OTel variables, parsing and errors."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exporter.errors import ConfigError
from exporter.settings import CONFIG_ENV, Settings, env_names, parse_key_value_list, parse_time

_OUR_PREFIXES = ("LETTA_EXPORTER_", "OTEL_")
_OUR_NAMES = {"LETTA_BASE_URL", "LETTA_API_KEY"}
# Bare names that must never be read (they are field names, not documented variables).
_STRAY_NAMES = ("SERVICE_NAME", "OTLP_ENDPOINT", "OTLP_PROTOCOL", "OTLP_HEADERS", "CONCURRENCY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment with none of the exporter's variables."""
    for name in list(os.environ):
        if name.upper().startswith(_OUR_PREFIXES) or name.upper() in _OUR_NAMES:
            monkeypatch.delenv(name)
    for name in _STRAY_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def toml(tmp_path: Path):
    """Write a TOML config file and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "exporter.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def config_error(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Settings.load(**kwargs)  # type: ignore[arg-type]
    return info.value


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_with_nothing_set() -> None:
    settings = Settings.load()
    assert settings.letta_base_url == "http://localhost:8283"
    assert settings.letta_api_key is None
    assert settings.concurrency == 8
    assert settings.service_name == "letta"
    assert settings.otlp_protocol == "http/protobuf"
    assert settings.sink == "auto"
    assert settings.effective_sink == "file"  # no OTLP endpoint configured
    assert settings.health_port == 9464
    assert settings.agent_ids == []
    assert settings.since is None
    assert settings.shard_spec is None


def test_settings_are_frozen() -> None:
    settings = Settings.load()
    with pytest.raises(ValueError, match="frozen"):
        settings.concurrency = 3  # type: ignore[misc]


# --- precedence: flags > env > TOML > defaults ------------------------------------------------


@dataclass(frozen=True)
class Layers:
    """One setting with a different value in each layer, so a comparison shows which one won."""

    field: str
    env: str  # the environment variable
    flag: object
    env_text: str
    env_value: object  # env_text once parsed
    toml_line: str
    toml_value: object
    default: object

    def toml(self, write) -> Path:
        return write(f"{self.field} = {self.toml_line}\n")

    def value(self, settings: Settings) -> object:
        return getattr(settings, self.field)


PRECEDENCE_CASES = [
    Layers("concurrency", "LETTA_EXPORTER_CONCURRENCY", 4, "5", 5, "3", 3, 8),
    Layers("poll_interval_seconds", "LETTA_EXPORTER_POLL_INTERVAL_SECONDS", 1.0, "2.5", 2.5,
           "4.0", 4.0, 15.0),
    Layers("letta_base_url", "LETTA_BASE_URL", "http://flag:1", "http://env:1", "http://env:1",
           '"http://toml:1"', "http://toml:1", "http://localhost:8283"),
    Layers("service_name", "OTEL_SERVICE_NAME", "flag-svc", "env-svc", "env-svc", '"toml-svc"',
           "toml-svc", "letta"),
    Layers("otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://flag:4318", "http://env:4318",
           "http://env:4318", '"http://toml:4318"', "http://toml:4318", None),
    Layers("agent_ids", "LETTA_EXPORTER_AGENT_IDS", ["agent-f"], "agent-e1,agent-e2",
           ["agent-e1", "agent-e2"], '["agent-t"]', ["agent-t"], []),
]  # fmt: skip


@pytest.mark.parametrize("case", PRECEDENCE_CASES, ids=[c.field for c in PRECEDENCE_CASES])
class TestPrecedence:
    def test_default(self, case: Layers) -> None:
        assert case.value(Settings.load()) == case.default

    def test_toml_beats_default(self, case: Layers, toml) -> None:
        assert case.value(Settings.load(config_file=case.toml(toml))) == case.toml_value

    def test_env_beats_default(self, case: Layers, monkeypatch) -> None:
        monkeypatch.setenv(case.env, case.env_text)
        assert case.value(Settings.load()) == case.env_value

    def test_env_beats_toml(self, case: Layers, monkeypatch, toml) -> None:
        monkeypatch.setenv(case.env, case.env_text)
        assert case.value(Settings.load(config_file=case.toml(toml))) == case.env_value

    def test_flag_beats_default(self, case: Layers) -> None:
        assert case.value(Settings.load(**{case.field: case.flag})) == case.flag

    def test_flag_beats_toml(self, case: Layers, toml) -> None:
        settings = Settings.load(config_file=case.toml(toml), **{case.field: case.flag})
        assert case.value(settings) == case.flag

    def test_flag_beats_env(self, case: Layers, monkeypatch) -> None:
        monkeypatch.setenv(case.env, case.env_text)
        assert case.value(Settings.load(**{case.field: case.flag})) == case.flag

    def test_flag_beats_env_and_toml(self, case: Layers, monkeypatch, toml) -> None:
        monkeypatch.setenv(case.env, case.env_text)
        settings = Settings.load(config_file=case.toml(toml), **{case.field: case.flag})
        assert case.value(settings) == case.flag

    def test_none_flag_means_not_given(self, case: Layers, monkeypatch) -> None:
        monkeypatch.setenv(case.env, case.env_text)
        assert case.value(Settings.load(**{case.field: None})) == case.env_value


def test_empty_list_flag_means_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_EXPORTER_AGENT_IDS", "agent-a")
    assert Settings.load(agent_ids=[]).agent_ids == ["agent-a"]
    assert Settings.load(agent_ids=["agent-b"]).agent_ids == ["agent-b"]


def test_config_file_from_environment(monkeypatch: pytest.MonkeyPatch, toml) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(toml("page_size = 7\n")))
    assert Settings.load().page_size == 7


def test_config_file_argument_beats_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / "env.toml"
    env_file.write_text("page_size = 7\n")
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text("page_size = 9\n")
    monkeypatch.setenv(CONFIG_ENV, str(env_file))
    assert Settings.load(config_file=flag_file).page_size == 9


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    error = config_error(config_file=tmp_path / "nope.toml")
    assert error.setting == "config file"
    assert "nope.toml" in str(error)


def test_toml_syntax_error_is_one_line(toml) -> None:
    error = config_error(config_file=toml("concurrency = = 3\n"))
    assert "exporter.toml" in error.setting
    assert "\n" not in str(error)


# --- the OTel standard variables -------------------------------------------------------------

# (field, signal-specific variable, generic variable, specific value, generic value, expected)
SIGNAL_CASES = [
    ("otlp_protocol", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL",
     "grpc", "http/protobuf", "grpc"),
    ("otlp_compression", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION",
     "gzip", "none", "gzip"),
    ("otlp_timeout_ms", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT",
     "2500", "7000", 2500),
    ("otlp_insecure", "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE",
     "false", "true", False),
    ("otlp_certificate", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
     "OTEL_EXPORTER_OTLP_CERTIFICATE", "/tls/traces.pem", "/tls/all.pem", Path("/tls/traces.pem")),
    ("otlp_client_key", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY",
     "/tls/traces.key", "/tls/all.key", Path("/tls/traces.key")),
    ("otlp_client_certificate", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
     "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/tls/t.crt", "/tls/a.crt", Path("/tls/t.crt")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "specific", "generic", "specific_value", "generic_value", "expected"),
    SIGNAL_CASES,
    ids=[case[0] for case in SIGNAL_CASES],
)
def test_traces_variable_beats_generic(
    monkeypatch, field, specific, generic, specific_value, generic_value, expected
) -> None:
    monkeypatch.setenv(generic, generic_value)
    generic_only = getattr(Settings.load(), field)
    monkeypatch.setenv(specific, specific_value)
    assert getattr(Settings.load(), field) == expected
    assert generic_only != expected  # the generic one alone was read, and then lost


def test_traces_headers_beat_generic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-generic=1")
    assert Settings.load().otlp_header_dict() == {"x-generic": "1"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-traces=2")
    assert Settings.load().otlp_header_dict() == {"x-traces": "2"}


def test_service_name_and_resource_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "letta-prod")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=ml%20ops")
    settings = Settings.load()
    assert settings.service_name == "letta-prod"
    assert settings.resource_attribute_dict() == {
        "deployment.environment": "prod",
        "team": "ml ops",
    }


def test_enum_values_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "GRPC")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", " Gzip ")
    monkeypatch.setenv("LETTA_EXPORTER_LOG_LEVEL", "debug")
    settings = Settings.load()
    assert (settings.otlp_protocol, settings.otlp_compression) == ("grpc", "gzip")
    assert settings.log_level == "DEBUG"


def test_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # OTel specification: an empty value is interpreted as if the variable were not set.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    monkeypatch.setenv("LETTA_EXPORTER_CONCURRENCY", "")
    settings = Settings.load()
    assert settings.otlp_endpoint is None
    assert settings.otlp_protocol == "http/protobuf"
    assert settings.concurrency == 8


@pytest.mark.parametrize("name", _STRAY_NAMES)
def test_bare_field_names_are_not_environment_variables(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # A container's unrelated SERVICE_NAME or OTLP_ENDPOINT must not change the exporter.
    monkeypatch.setenv(name, "http://stray:1" if "ENDPOINT" in name else "stray")
    settings = Settings.load()
    assert settings.service_name == "letta"
    assert settings.otlp_endpoint is None
    assert settings.concurrency == 8


def test_standard_variable_beats_prefixed_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_EXPORTER_SERVICE_NAME", "prefixed")
    assert Settings.load().service_name == "prefixed"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "standard")
    assert Settings.load().service_name == "standard"


def test_env_names_lists_winner_first() -> None:
    assert env_names("otlp_protocol") == [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    assert env_names("letta_base_url") == ["LETTA_BASE_URL"]
    assert env_names("concurrency") == ["LETTA_EXPORTER_CONCURRENCY"]


# --- the traces URL and the sink --------------------------------------------------------------

# (protocol, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, expected URL)
URL_CASES = [
    ("grpc", None, None, "http://localhost:4317"),
    ("http/protobuf", None, None, "http://localhost:4318/v1/traces"),
    ("http/protobuf", "http://collector:4318", None, "http://collector:4318/v1/traces"),
    ("http/protobuf", "http://collector:4318/", None, "http://collector:4318/v1/traces"),
    ("http/protobuf", "https://gw.example/otlp", None, "https://gw.example/otlp/v1/traces"),
    ("grpc", "http://collector:4317", None, "http://collector:4317"),
    ("http/protobuf", None, "http://collector:4318/custom", "http://collector:4318/custom"),
    ("http/protobuf", "http://ignored:4318", "http://phoenix:6006/v1/traces",
     "http://phoenix:6006/v1/traces"),
    ("grpc", "http://ignored:4317", "https://traces:4317", "https://traces:4317"),
]  # fmt: skip


@pytest.mark.parametrize(("protocol", "endpoint", "traces_endpoint", "expected"), URL_CASES)
def test_otlp_traces_url(monkeypatch, protocol, endpoint, traces_endpoint, expected) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    if endpoint:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    if traces_endpoint:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_endpoint)
    assert Settings.load().otlp_traces_url == expected


def test_traces_url_from_flags() -> None:
    settings = Settings.load(otlp_protocol="http/protobuf", otlp_endpoint="http://c:4318")
    assert settings.otlp_traces_url == "http://c:4318/v1/traces"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, "file"),
        ({"otlp_endpoint": "http://c:4318"}, "otlp"),
        ({"otlp_traces_endpoint": "http://c:4318/v1/traces"}, "otlp"),
        ({"sink": "console", "otlp_endpoint": "http://c:4318"}, "console"),
        ({"sink": "otlp"}, "otlp"),
    ],
)
def test_effective_sink(flags: dict[str, str], expected: str) -> None:
    assert Settings.load(**flags).effective_sink == expected


# --- key=value lists and comma-separated lists ------------------------------------------------


def test_headers_are_url_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "Authorization=Bearer%20tok%3D%3D , x-scope-orgid=tenant%2C1,,api-key=a=b",
    )
    assert Settings.load().otlp_header_dict() == {
        "Authorization": "Bearer tok==",
        "x-scope-orgid": "tenant,1",
        "api-key": "a=b",  # only the first '=' separates
    }


def test_no_headers_is_empty_dict() -> None:
    assert Settings.load().otlp_header_dict() == {}


def test_parse_key_value_list_error_names_item_not_text() -> None:
    with pytest.raises(ConfigError) as info:
        parse_key_value_list("a=1,sk-SECRET", setting="OTEL_EXPORTER_OTLP_HEADERS")
    assert info.value.setting == "OTEL_EXPORTER_OTLP_HEADERS"
    assert "item 2" in str(info.value)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["a=1,authorization=Bearer%zzSECRET", "a=1,x%2=SECRET", "a=1,k=SECRET%", "a=1,k=%ffSECRET"],
)
def test_parse_key_value_list_rejects_a_bad_escape(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_key_value_list(text, setting="OTEL_EXPORTER_OTLP_HEADERS")
    assert info.value.setting == "OTEL_EXPORTER_OTLP_HEADERS"
    assert "item 2" in str(info.value)
    assert "SECRET" not in str(info.value)
    # Through the settings too: the error names the variable, never the value.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", text)
    with pytest.raises(ConfigError) as loaded:
        Settings.load().otlp_header_dict()
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(loaded.value)
    assert "SECRET" not in str(loaded.value)
    assert parse_key_value_list("k=a%20b%2Cc", setting="S") == {"k": "a b,c"}


@pytest.mark.parametrize("field", ["agent_ids", "redact_patterns"])
def test_comma_separated_env_lists(monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    monkeypatch.setenv(f"LETTA_EXPORTER_{field.upper()}", " a1 , b2,,c3 ")
    assert getattr(Settings.load(), field) == ["a1", "b2", "c3"]


def test_lists_from_toml_and_flags(toml) -> None:
    path = toml('agent_ids = ["agent-1", "agent-2"]\nredact_patterns = ["sk-[A-Za-z0-9]+"]\n')
    settings = Settings.load(config_file=path)
    assert settings.agent_ids == ["agent-1", "agent-2"]
    assert settings.redact_patterns == ["sk-[A-Za-z0-9]+"]
    assert Settings.load(agent_ids=["agent-9"]).agent_ids == ["agent-9"]


# --- since / until ----------------------------------------------------------------------------

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("24h", timedelta(hours=24)),
        ("1.5h", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        (" 3H ", timedelta(hours=3)),
    ],
)
def test_parse_relative_time(text: str, delta: timedelta) -> None:
    assert parse_time(text, now=NOW) == NOW - delta


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31T12:00:00Z", NOW),
        ("2026-01-31T12:00:00", NOW),  # naive means UTC, as in Letta
        ("2026-01-31T14:00:00+02:00", NOW),
        ("2026-01-31", datetime(2026, 1, 31, tzinfo=UTC)),
    ],
)
def test_parse_iso_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_relative_since_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_EXPORTER_SINCE", "24h")
    before = datetime.now(UTC)
    since = Settings.load().since
    after = datetime.now(UTC)
    assert since is not None
    assert before - timedelta(hours=24) <= since <= after - timedelta(hours=24)


def test_iso_since_until_from_flags_and_toml(toml) -> None:
    settings = Settings.load(since="2026-01-01T00:00:00Z", until="2026-01-02T00:00:00+01:00")
    assert settings.since == datetime(2026, 1, 1, tzinfo=UTC)
    assert settings.until == datetime(2026, 1, 1, 23, 0, tzinfo=UTC)
    from_toml = Settings.load(config_file=toml("since = 2026-01-01T00:00:00Z\n"))
    assert from_toml.since == datetime(2026, 1, 1, tzinfo=UTC)
    local = Settings.load(config_file=toml("since = 2026-01-01T00:00:00\n"))
    assert local.since == datetime(2026, 1, 1, tzinfo=UTC)


def test_since_with_offset_keeps_the_instant() -> None:
    since = Settings.load(since="2026-01-01T05:30:00+05:30").since
    assert since == datetime(2026, 1, 1, tzinfo=UTC)
    assert since.utcoffset() == timedelta(hours=5, minutes=30)  # the offset given is kept


def test_since_must_be_before_until() -> None:
    error = config_error(since="2026-01-02T00:00:00Z", until="2026-01-01T00:00:00Z")
    assert "since must be before until" in str(error)


# --- bad values: one line, naming the setting and what is allowed ----------------------------

# (environment variable, bad value, text the setting is named by, text saying what is allowed)
BAD_ENV = [
    ("LETTA_EXPORTER_CONCURRENCY", "0", "concurrency", "greater than or equal to 1"),
    ("LETTA_EXPORTER_CONCURRENCY", "lots", "LETTA_EXPORTER_CONCURRENCY", "valid integer"),
    ("LETTA_EXPORTER_PAGE_SIZE", "5000", "page_size", "less than or equal to 1000"),
    ("LETTA_EXPORTER_DISCOVERY", "search", "discovery", "'auto', 'steps' or 'runs'"),
    ("LETTA_EXPORTER_CONTENT", "some", "content", "'none', 'full' or 'raw'"),
    ("LETTA_EXPORTER_SINK", "kafka", "sink", "'auto', 'otlp', 'file' or 'console'"),
    ("LETTA_EXPORTER_LOG_LEVEL", "trace", "log_level", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ("LETTA_EXPORTER_LOG_FORMAT", "xml", "log_format", "'text' or 'json'"),
    ("LETTA_EXPORTER_SHARD", "3/3", "shard", "0 <= i < n"),
    ("LETTA_EXPORTER_SHARD", "first", "LETTA_EXPORTER_SHARD", "'i/n'"),
    ("LETTA_EXPORTER_SINCE", "yesterday", "since", "ISO 8601"),
    ("LETTA_EXPORTER_UNTIL", "soon", "LETTA_EXPORTER_UNTIL", "relative one"),
    ("LETTA_EXPORTER_REDACT_PATTERNS", "sk-[a", "redact_patterns", "not a regular expression"),
    ("LETTA_EXPORTER_HEALTH_PORT", "70000", "health_port", "less than or equal to 65535"),
    ("LETTA_EXPORTER_JOIN_LETTA_TRACES", "perhaps", "join_letta_traces", "valid boolean"),
    ("LETTA_EXPORTER_REQUEST_TIMEOUT_SECONDS", "0", "request_timeout_seconds", "greater than 0"),
    ("LETTA_EXPORTER_CONTENT_MAX_BYTES", "10", "content_max_bytes", "greater than or equal to 256"),
    ("LETTA_BASE_URL", "letta:8283", "LETTA_BASE_URL", "http:// or https:// URL"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "grpc://c", "otlp_traces_endpoint", "https://"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL",
     "'grpc' or 'http/protobuf'"),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "'grpc'"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli", "otlp_compression", "'none' or 'gzip'"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5", "OTEL_EXPORTER_OTLP_TIMEOUT", "greater than 0"),
    ("OTEL_EXPORTER_OTLP_INSECURE", "maybe", "otlp_insecure", "valid boolean"),
    ("OTEL_RESOURCE_ATTRIBUTES", "prod", "OTEL_RESOURCE_ATTRIBUTES", "key1=value1"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "no-equals", "OTEL_EXPORTER_OTLP_HEADERS", "key1=value1"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("env", "value", "names", "allowed"), BAD_ENV, ids=[f"{e}={v}" for e, v, *_ in BAD_ENV]
)
def test_bad_env_value(monkeypatch, env, value, names, allowed) -> None:
    monkeypatch.setenv(env, value)
    error = config_error()
    text = str(error)
    assert "\n" not in text
    assert names in text
    assert allowed in text


@pytest.mark.parametrize(
    ("flags", "names", "allowed"),
    [
        ({"concurrency": 0}, "concurrency", "greater than or equal to 1"),
        ({"concurrency": 65}, "concurrency", "less than or equal"),
        ({"service_name": ""}, "service_name", "at least 1 character"),
        ({"letta_base_url": "ftp://letta"}, "letta_base_url", "http:// or https://"),
        ({"source": "file"}, "source=file", "needs input"),
        ({"shard": "-1/2"}, "shard", "'i/n'"),
        ({"otlp_protocol": "thrift"}, "otlp_protocol", "'grpc' or 'http/protobuf'"),
    ],
)
def test_bad_flag_value(flags: dict[str, object], names: str, allowed: str) -> None:
    text = str(config_error(**flags))
    assert "\n" not in text
    assert names in text
    assert allowed in text


@pytest.mark.parametrize(
    ("line", "names", "allowed"),
    [
        ('concurrency = "eight"', "concurrency", "valid integer"),
        ('discovery = "magic"', "discovery", "'auto', 'steps' or 'runs'"),
        ('since = "last tuesday"', "since", "ISO 8601"),
        ("limit = 0", "limit", "greater than or equal to 1"),
        ('otlp_endpoint = "localhost"', "otlp_endpoint", "http:// or https://"),
    ],
)
def test_bad_toml_value(toml, line: str, names: str, allowed: str) -> None:
    text = str(config_error(config_file=toml(line + "\n")))
    assert "\n" not in text
    assert names in text
    assert allowed in text


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("OTEL_EXPORTER_OTLP_HEADERS", "sk-live-SECRET123"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20SECRET123,SECRET456"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key:SECRET123"),
    ],
)
def test_bad_headers_never_echo_the_secret(monkeypatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    error = config_error()
    assert "otlp_headers" in str(error)
    assert "key1=value1" in str(error)
    shown = "".join(traceback.format_exception(error))  # what the CLI could ever print
    assert "SECRET" not in shown
    assert "Bearer" not in shown


def test_bad_api_key_type_never_echoed(toml) -> None:
    error = config_error(config_file=toml("letta_api_key = 987654321\n"))
    assert "letta_api_key" in str(error)
    assert "987654321" not in "".join(traceback.format_exception(error))


# --- unknown settings -------------------------------------------------------------------------


def test_unknown_prefixed_env_var_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_EXPORTER_CONCURENCY", "3")  # typo
    error = config_error()
    assert error.setting == "LETTA_EXPORTER_CONCURENCY"
    assert "unknown setting" in str(error)


def test_config_variable_is_not_unknown(monkeypatch: pytest.MonkeyPatch, toml) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(toml("")))
    Settings.load()


def test_other_letta_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Letta server's own settings (LETTA_PG_URI, LETTA_OTEL_...) may share the environment.
    monkeypatch.setenv("LETTA_PG_URI", "postgresql://letta@postgres/letta")
    monkeypatch.setenv("LETTA_OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4317")
    assert Settings.load().otlp_endpoint is None


def test_unknown_toml_key_rejected(toml) -> None:
    error = config_error(config_file=toml('letta_url = "http://letta:8283"\n'))
    assert error.setting == "letta_url"
    assert "unknown setting" in str(error)


# --- secrets ----------------------------------------------------------------------------------


def test_secrets_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_API_KEY", "sk-let-SECRET-KEY")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20SECRET-TOKEN")
    settings = Settings.load()
    for shown in (repr(settings), str(settings), settings.model_dump_json(), f"{settings!r}"):
        assert "SECRET" not in shown
    assert "**********" in repr(settings)
    assert settings.letta_api_key is not None
    assert settings.letta_api_key.get_secret_value() == "sk-let-SECRET-KEY"
    assert settings.otlp_header_dict() == {"authorization": "Bearer SECRET-TOKEN"}


# --- shard ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"), [("0/1", (0, 1)), ("1/3", (1, 3)), (" 2 / 4 ", (2, 4)), ("07/10", (7, 10))]
)
def test_shard_spec(monkeypatch: pytest.MonkeyPatch, text: str, spec: tuple[int, int]) -> None:
    monkeypatch.setenv("LETTA_EXPORTER_SHARD", text)
    settings = Settings.load()
    assert settings.shard_spec == spec
    assert settings.shard == f"{spec[0]}/{spec[1]}"


# --- the socket, the journal ------------------------------------------------------------------


def test_socket_settings_defaults_and_derived_values(tmp_path: Path) -> None:
    settings = Settings.load(state_path=tmp_path / "state.json")
    assert settings.socket is None
    assert settings.socket_mode == "0660"
    assert settings.socket_mode_bits == 0o660
    assert settings.journal_max_bytes == 2 << 30
    assert settings.socket_max_record_bytes == 128 << 20
    assert settings.effective_journal_dir == tmp_path / "state.json.journal"


@pytest.mark.parametrize(
    ("given", "bits"), [("0660", 0o660), ("660", 0o660), ("0o600", 0o600), (" 0770 ", 0o770)]
)
def test_socket_mode_is_octal_text(monkeypatch: pytest.MonkeyPatch, given: str, bits: int) -> None:
    monkeypatch.setenv("LETTA_EXPORTER_SOCKET_MODE", given)
    assert Settings.load().socket_mode_bits == bits


def test_socket_mode_from_a_toml_octal_integer(toml) -> None:
    settings = Settings.load(config_file=toml("socket_mode = 0o640\n"))
    assert settings.socket_mode == "0640"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("0999", "octal"),
        ("rw-rw----", "octal"),
        ("01777", "octal"),
        ("0440", "read and write"),
    ],
)
def test_bad_socket_mode_is_one_line(given: str, message: str) -> None:
    error = config_error(socket_mode=given)
    assert error.setting.startswith("socket_mode (flag --socket-mode)")
    assert message in error.message
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("given", "size"),
    [("1073741824", 1 << 30), ("512MiB", 512 << 20), ("2GiB", 2 << 30), ("64 M", 64 << 20)],
)
def test_journal_size_with_units(monkeypatch: pytest.MonkeyPatch, given: str, size: int) -> None:
    monkeypatch.setenv("LETTA_EXPORTER_JOURNAL_MAX_BYTES", given)
    assert Settings.load().journal_max_bytes == size


def test_journal_sizes_are_checked() -> None:
    assert "size" in config_error(journal_max_bytes="lots").message
    assert "greater than or equal" in config_error(journal_max_bytes="1KiB").message
    error = config_error(socket="/tmp/t.sock", journal_max_bytes="64MiB")
    assert "socket_max_record_bytes" in str(error)


def test_socket_from_env_toml_and_flag(monkeypatch: pytest.MonkeyPatch, toml) -> None:
    path = toml('socket = "/from/toml.sock"\n')
    assert Settings.load(config_file=path).socket == Path("/from/toml.sock")
    monkeypatch.setenv("LETTA_EXPORTER_SOCKET", "/from/env.sock")
    assert Settings.load(config_file=path).socket == Path("/from/env.sock")
    assert Settings.load(config_file=path, socket="/flag.sock").socket == Path("/flag.sock")


# --- the database -----------------------------------------------------------------------------

_PG = "postgresql://reader:pg-SECRET-pw@db:5432/letta"


def test_database_url_falls_back_to_lettas_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_PG_URI", "postgresql+asyncpg://letta:letta@postgres:5432/letta")
    settings = Settings.load()
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value().startswith("postgresql+asyncpg://")
    monkeypatch.setenv("LETTA_EXPORTER_DATABASE_URL", _PG)
    settings = Settings.load()
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == _PG
    assert env_names("database_url") == ["LETTA_EXPORTER_DATABASE_URL", "LETTA_PG_URI"]


def test_source_postgres_needs_a_database_url() -> None:
    error = config_error(source="postgres")
    assert "database_url" in str(error)
    assert "LETTA_PG_URI" in str(error)
    settings = Settings.load(source="POSTGRES", database_url=_PG)
    assert settings.source == "postgres"


def test_source_postgres_refuses_the_api_only_filters() -> None:
    assert "model filter" in str(config_error(source="postgres", database_url=_PG, model="x"))
    assert "project" in str(config_error(source="postgres", database_url=_PG, project_id="p"))


@pytest.mark.parametrize(
    "url",
    [
        "mysql://reader:pg-SECRET-pw@db/letta",
        "postgresql://reader:pg-SECRET-pw@db:99999/letta",
        "pg-SECRET-pw",
    ],
)
def test_bad_database_url_never_echoes_the_password(monkeypatch, url: str) -> None:
    monkeypatch.setenv("LETTA_EXPORTER_DATABASE_URL", url)
    error = config_error()
    assert error.setting == "database_url (LETTA_EXPORTER_DATABASE_URL)"
    shown = "".join(traceback.format_exception(error))
    assert "SECRET" not in shown


def test_database_url_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_EXPORTER_DATABASE_URL", _PG)
    settings = Settings.load(source="postgres")
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "SECRET" not in shown


def test_database_keyword_form_accepted() -> None:
    settings = Settings.load(database_url="host=db dbname=letta user=reader password=x")
    assert settings.database_url is not None


# --- GenAI metrics and prices -----------------------------------------------------------------


def test_metrics_follow_the_sink_unless_set() -> None:
    assert Settings.load().metrics_enabled is False  # the file sink
    assert Settings.load(sink="console").metrics_enabled is False
    assert Settings.load(otlp_endpoint="http://c:4318").metrics_enabled is True
    assert Settings.load(otlp_endpoint="http://c:4318", metrics=False).metrics_enabled is False
    error = config_error(metrics=True, sink="file")
    assert "OTLP sink" in str(error)


@pytest.mark.parametrize("value", ["delta", "Delta", "LOWMEMORY", "cumulative"])
def test_metrics_temporality_from_the_otel_variable(monkeypatch, value: str) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", value)
    assert Settings.load().metrics_temporality == value.lower()
    monkeypatch.setenv("LETTA_EXPORTER_METRICS_TEMPORALITY", "cumulative")
    assert Settings.load().metrics_temporality == "cumulative"


def test_bad_metrics_temporality() -> None:
    error = config_error(metrics_temporality="sometimes")
    assert error.setting.startswith("metrics_temporality")
    assert "cumulative" in error.message


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        ({"otlp_endpoint": "http://c:4318"}, "http://c:4318/v1/metrics"),
        ({"otlp_endpoint": "http://c:4318/otlp/"}, "http://c:4318/otlp/v1/metrics"),
        ({"otlp_traces_endpoint": "http://c:4318/v1/traces"}, "http://c:4318/v1/traces"),
        ({"otlp_endpoint": "c:4317", "otlp_protocol": "grpc"}, "c:4317"),
    ],
)
def test_metrics_url_beside_the_traces(settings: dict[str, str], url: str) -> None:
    # A traces-only URL is handed on as it is; the metrics transport swaps /v1/traces.
    assert Settings.load(**settings).otlp_metrics_url == url


def test_metrics_ledger_beside_the_state_file_per_shard(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    assert Settings.load(state_path=state).metrics_ledger_path == tmp_path / (
        "state.json.metrics-ledger"
    )
    sharded = Settings.load(state_path=state, shard="1/3").metrics_ledger_path
    assert sharded == tmp_path / "state.json.metrics-ledger.shard-1-of-3"


def test_prices_file_is_read_at_load(tmp_path: Path) -> None:
    good = tmp_path / "prices.toml"
    good.write_text('[models."m"]\ninput = 1\noutput = 2\n', encoding="utf-8")
    assert Settings.load(prices_file=good).prices_file == good
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."m"]\ninput = 1\n', encoding="utf-8")
    error = config_error(prices_file=bad)
    assert error.setting == "prices_file (flag --prices-file)"
    assert "output is required" in error.message
    assert "\n" not in str(error)
    missing = config_error(prices_file=tmp_path / "none.toml")
    assert "cannot read" in missing.message


def test_bad_database_url_type_never_echoed(toml) -> None:
    error = config_error(config_file=toml("database_url = 987654321\n"))
    assert "database_url" in str(error)
    assert "987654321" not in "".join(traceback.format_exception(error))


def test_the_poll_slows_down_when_the_socket_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.load().effective_poll_interval_seconds == 15.0
    assert Settings.load(socket="/run/t.sock").effective_poll_interval_seconds == 60.0
    assert (
        Settings.load(socket="/run/t.sock", poll_interval_seconds=5).effective_poll_interval_seconds
        == 5.0
    )
    monkeypatch.setenv("LETTA_EXPORTER_POLL_INTERVAL_SECONDS", "20")
    assert Settings.load(socket="/run/t.sock").effective_poll_interval_seconds == 20.0


def test_the_fields_keep_their_order() -> None:
    # The field groups are base classes: their order decides the fields' (the README table,
    # the example TOML and --help follow it), so a reordering must be a decision.
    names = list(Settings.model_fields)
    assert names[:3] == ["letta_base_url", "letta_api_key", "project_id"]
    assert names.index("since") < names.index("socket") < names.index("database_url")
    assert names.index("database_url") < names.index("otlp_endpoint") < names.index("metrics")
    assert names.index("metrics") < names.index("state_path")

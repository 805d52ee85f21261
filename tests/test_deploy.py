"""Deployment files, checked without a Docker engine: they parse, and they agree with each other.

The compose stack (config/docker-compose.yaml), the collector, Tempo, Prometheus and Grafana
configurations, the Dockerfile and the example TOML refer to one another by service names, ports,
paths and setting names. A rename in one of them breaks the stack only when someone runs it; these
tests break first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from exporter import genai_metrics
from exporter.genai_metrics import _names as metric_names
from exporter.settings import Settings, env_names

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
COMPOSE_FILE = CONFIG / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
EXAMPLE_TOML = CONFIG / "exporter.example.toml"
COLLECTOR_FILE = CONFIG / "otel-collector.yaml"
TEMPO_FILE = CONFIG / "tempo.yaml"
PROMETHEUS_FILE = CONFIG / "prometheus.yaml"
DATASOURCES_FILE = CONFIG / "grafana/provisioning/datasources/datasources.yaml"
DASHBOARDS_FILE = CONFIG / "grafana/provisioning/dashboards/dashboards.yaml"
DASHBOARD_JSON = CONFIG / "grafana/dashboards/llm-calls.json"
DEPLOY_DOC = ROOT / "README.md"
CONFIG_DOC = ROOT / "README.md"

#: The ports third-party images listen on, from their documentation. The other services' ports
#: are read from this repository's files (tempo.yaml, otel-collector.yaml, Settings).
IMAGE_PORTS = {
    "pgvector/pgvector": {5432},
    "letta/letta": {8283},
    "jaegertracing/jaeger": {4317, 4318, 5778, 9411, 13133, 16686},
    "prom/prometheus": {9090},
    "grafana/grafana": {3000},
}

CLI_COMMANDS = {"run", "export", "convert", "check"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are loaded from the files under test only, not from the developer's shell."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith(("LETTA_EXPORTER_", "OTEL_")) or upper in {
            "LETTA_BASE_URL",
            "LETTA_API_KEY",
        }:
            monkeypatch.delenv(name)


# --- readers ------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return load_yaml(COLLECTOR_FILE)


@pytest.fixture(scope="module")
def tempo() -> dict[str, Any]:
    return load_yaml(TEMPO_FILE)


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    bind: bool  # a host path (else a named volume)


def mounts(service: dict[str, Any]) -> list[Mount]:
    result = []
    for item in service.get("volumes", []):
        if isinstance(item, dict):
            source, target = str(item.get("source", "")), str(item["target"])
            bind = item.get("type") == "bind"
        else:
            parts = str(item).split(":")
            source, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
            bind = source.startswith((".", "/", "~"))
        result.append(Mount(source, target, bind))
    return result


@dataclass(frozen=True)
class Port:
    host_ip: str
    host: int
    container: int


def published_ports(service: dict[str, Any]) -> list[Port]:
    result = []
    for item in service.get("ports", []):
        if isinstance(item, dict):
            result.append(
                Port(
                    str(item.get("host_ip", "0.0.0.0")),
                    int(item["published"]),
                    int(item["target"]),
                )
            )
            continue
        text = str(item).split("/")[0]
        parts = text.rsplit(":", 2)
        if len(parts) == 3:
            result.append(Port(parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            result.append(Port("0.0.0.0", int(parts[0]), int(parts[1])))
        else:
            result.append(Port("0.0.0.0", int(parts[0]), int(parts[0])))
    return result


def depends_on(service: dict[str, Any]) -> list[str]:
    deps = service.get("depends_on", [])
    return list(deps) if isinstance(deps, dict | list) else []


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def flag_value(args: list[str], flag: str) -> str:
    """The value of ``--flag=value`` / ``-flag=value`` / ``--flag value`` in a command line."""
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag:
            return args[index + 1]
    raise AssertionError(f"{flag} not in {args}")


def host_port(endpoint: str) -> tuple[str, int]:
    """``jaeger:4317`` or ``http://tempo:3200/path`` -> (host, port)."""
    parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    assert parts.hostname, f"{endpoint!r} has no host"
    assert parts.port, f"{endpoint!r} has no port"
    return parts.hostname, parts.port


def image_name(service: dict[str, Any]) -> str:
    return str(service.get("image", "")).rsplit(":", 1)[0]


def mounted_file(service: dict[str, Any], target: str) -> Path:
    """The repository file bind-mounted at ``target`` (or under a mounted directory)."""
    for mount in mounts(service):
        if not mount.bind:
            continue
        inside = PurePosixPath(target)
        if inside == PurePosixPath(mount.target) or PurePosixPath(mount.target) in inside.parents:
            relative = inside.relative_to(mount.target)
            return (COMPOSE_FILE.parent / mount.source / relative).resolve()
    raise AssertionError(f"nothing is bind-mounted at {target}")


def named_volume_at(service: dict[str, Any], path: str) -> str:
    """The named volume holding ``path`` in this service."""
    inside = PurePosixPath(path)
    for mount in mounts(service):
        target = PurePosixPath(mount.target)
        if not mount.bind and (inside == target or target in inside.parents):
            return mount.source
    raise AssertionError(f"{path} is not on a named volume")


# --- the Dockerfile -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_stages() -> tuple[dict[str, str], list[list[Instruction]]]:
    """Global ARG defaults, and the instructions of each stage (a stage starts with FROM)."""
    logical: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buffer):
            continue  # comments (also inside continued lines) and blank lines
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            stages.append([instruction])
        elif stages:
            stages[-1].append(instruction)
        elif instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            global_args[name] = default
    return global_args, stages


def instructions(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    result: dict[str, str] = {}
    for args in instructions(stage, "ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            result[key] = value
    return result


@pytest.fixture(scope="module")
def final_stage() -> list[Instruction]:
    return dockerfile_stages()[1][-1]


@pytest.fixture(scope="module")
def image_env(final_stage: list[Instruction]) -> dict[str, str]:
    return env_of(final_stage)


def cli_group() -> Any:
    """The CLI's click group: the typer app as typer builds it, or the group itself."""
    from exporter.cli import app

    if hasattr(app, "commands"):  # already a click group
        return app
    import typer.main

    return typer.main.get_command(app)


def cli_command_names() -> set[str]:
    return set(cli_group().commands)


# ===================================================================================== tests
# --- every file parses --------------------------------------------------------------------------


def config_files() -> Iterator[Path]:
    for path in sorted(CONFIG.rglob("*")):
        if path.suffix in {".yaml", ".yml", ".toml", ".json"}:
            yield path


@pytest.mark.parametrize("path", list(config_files()), ids=lambda p: str(p.relative_to(CONFIG)))
def test_config_file_parses(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        data = tomllib.loads(text)
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        data = yaml.safe_load(text)
    assert isinstance(data, dict)
    assert data


def test_the_expected_files_exist() -> None:
    for path in (
        COMPOSE_FILE,
        EXAMPLE_TOML,
        COLLECTOR_FILE,
        TEMPO_FILE,
        PROMETHEUS_FILE,
        DATASOURCES_FILE,
        DASHBOARDS_FILE,
        DASHBOARD_JSON,
        DOCKERFILE,
        ROOT / ".dockerignore",
    ):
        assert path.is_file(), path


# --- compose: every reference resolves ----------------------------------------------------------


def listening_ports(name: str, service: dict[str, Any]) -> set[int]:
    """The container ports a compose service listens on."""
    if "build" in service:  # the exporter
        _, stages = dockerfile_stages()
        exposed = {
            int(p.split("/")[0]) for e in instructions(stages[-1], "EXPOSE") for p in e.split()
        }
        return exposed | {Settings.model_fields["health_port"].default}
    image = image_name(service)
    if image.endswith("opentelemetry-collector-contrib"):
        return collector_ports(load_yaml(COLLECTOR_FILE))
    if image == "grafana/tempo":
        return tempo_ports(load_yaml(TEMPO_FILE))
    if image in IMAGE_PORTS:
        return IMAGE_PORTS[image]
    return set()


def collector_ports(config: dict[str, Any]) -> set[int]:
    ports = {
        host_port(protocol["endpoint"])[1]
        for protocol in config["receivers"]["otlp"]["protocols"].values()
    }
    ports.add(host_port(config["extensions"]["health_check"]["endpoint"])[1])
    for reader in config["service"]["telemetry"]["metrics"]["readers"]:
        ports.add(int(reader["pull"]["exporter"]["prometheus"]["port"]))
    return ports


def tempo_ports(config: dict[str, Any]) -> set[int]:
    ports = {int(config["server"]["http_listen_port"]), int(config["server"]["grpc_listen_port"])}
    for protocol in config["distributor"]["receivers"]["otlp"]["protocols"].values():
        ports.add(host_port(protocol["endpoint"])[1])
    return ports


def assert_reaches(services: dict[str, Any], endpoint: str, *, what: str) -> tuple[str, int]:
    host, port = host_port(endpoint)
    assert host in services, f"{what}: {endpoint} names no compose service"
    listening = listening_ports(host, services[host])
    assert port in listening, f"{what}: {host} listens on {sorted(listening)}, not {port}"
    return host, port


def test_compose_services_have_image_or_build(services: dict[str, Any]) -> None:
    assert {"letta", "postgres", "exporter", "otel-collector", "jaeger", "tempo", "grafana"} <= set(
        services
    )
    for name, service in services.items():
        assert "image" in service or "build" in service, name


def test_compose_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = str(service["image"])
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest", f"{name}: pin {image} to a version"
        assert re.search(r"\d", tag), f"{name}: {image} is not a version tag"


def test_compose_build_context_and_dockerfile_exist(services: dict[str, Any]) -> None:
    built = [s for s in services.values() if "build" in s]
    assert built
    for service in built:
        build = service["build"]
        context = COMPOSE_FILE.parent / (build if isinstance(build, str) else build["context"])
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert context.is_dir(), context
        assert (context / dockerfile).resolve() == DOCKERFILE


def test_compose_bind_mounts_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for mount in mounts(service):
            if mount.bind:
                source = (COMPOSE_FILE.parent / mount.source).resolve()
                assert source.exists(), f"{name}: {mount.source} does not exist"
                assert ROOT in source.parents, f"{name}: {mount.source} is outside the repository"


def test_compose_named_volumes_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        mount.source
        for service in compose["services"].values()
        for mount in mounts(service)
        if not mount.bind
    }
    assert used <= declared, f"undeclared volumes: {used - declared}"
    assert declared <= used, f"declared but unused volumes: {declared - used}"


def test_compose_host_ports_unique_and_local(services: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, service in services.items():
        for port in published_ports(service):
            assert port.host not in seen, f"{name} and {seen[port.host]} both publish {port.host}"
            seen[port.host] = name
            assert port.host_ip == "127.0.0.1", f"{name}: publish {port.host} on 127.0.0.1 only"
            listening = listening_ports(name, service)
            assert port.container in listening, f"{name} does not listen on {port.container}"


def test_compose_depends_on_existing_services_without_cycles(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dep in depends_on(service):
            assert dep in services, f"{name} depends on unknown {dep}"
            assert dep != name

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        for dep in depends_on(services[name]):
            visit(dep, (*path, name))

    for name in services:
        visit(name, ())


def test_letta_uses_postgres_and_sends_its_spans_to_the_collector(
    services: dict[str, Any], collector: dict[str, Any]
) -> None:
    env = environment(services["letta"])
    host, _ = assert_reaches(services, env["LETTA_PG_URI"], what="LETTA_PG_URI")
    assert host == "postgres"
    assert "pgvector" in image_name(services[host])
    assert "postgres" in depends_on(services["letta"])
    host, port = assert_reaches(
        services, env["LETTA_OTEL_EXPORTER_OTLP_ENDPOINT"], what="Letta's own OTel"
    )
    assert host == "otel-collector"
    grpc_port = host_port(collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])[1]
    assert port == grpc_port  # Letta's server exports over gRPC


def test_postgres_has_a_healthcheck_letta_waits_for(services: dict[str, Any]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["letta"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_exporter_service_settings(
    services: dict[str, Any],
    collector: dict[str, Any],
    image_env: dict[str, str],
    final_stage: list[Instruction],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exporter's environment (image defaults + compose) is valid and points at the stack."""
    exporter = services["exporter"]
    env = environment(exporter)
    assert not [k for k, v in env.items() if "${" in v], "no host interpolation needed"
    for key, value in {**image_env, **env}.items():
        if key.startswith(("LETTA_", "OTEL_")):
            monkeypatch.setenv(key, value)
    settings = Settings.load()

    host, port = assert_reaches(services, settings.letta_base_url, what="LETTA_BASE_URL")
    assert host == "letta"
    assert "letta" in depends_on(exporter)

    assert settings.effective_sink == "otlp"
    host, port = assert_reaches(services, settings.otlp_traces_url, what="exporter OTLP")
    assert host == "otel-collector"
    protocol = "grpc" if settings.otlp_protocol == "grpc" else "http"
    receiver = collector["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
    assert port == host_port(receiver)[1], "the protocol matches the receiver on that port"

    volume_dir = json.loads(instructions(final_stage, "VOLUME")[0])[0]
    assert PurePosixPath(volume_dir) in PurePosixPath(settings.state_path).parents
    assert named_volume_at(exporter, str(settings.state_path)) == "exporter-state"
    assert any(p.container == settings.health_port for p in published_ports(exporter))


# --- the collector ------------------------------------------------------------------------------


def component_type(name: str) -> str:
    return name.split("/", 1)[0]


def test_collector_pipelines_reference_defined_components(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    assert "traces" in pipelines
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for name in pipeline.get(kind, []):
                assert name in collector[kind], f"{kind[:-1]} {name} is not defined"
    for name in collector["service"]["extensions"]:
        assert name in collector["extensions"]


def test_collector_processors_order(collector: dict[str, Any]) -> None:
    processors = collector["service"]["pipelines"]["traces"]["processors"]
    assert processors[0] == "memory_limiter", "memory_limiter must come first"
    assert "batch" in processors


def test_collector_receives_otlp_on_standard_ports(collector: dict[str, Any]) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert host_port(protocols["grpc"]["endpoint"]) == ("0.0.0.0", 4317)
    assert host_port(protocols["http"]["endpoint"]) == ("0.0.0.0", 4318)


def test_collector_exporters_reach_jaeger_and_tempo(
    collector: dict[str, Any], services: dict[str, Any]
) -> None:
    exporters = collector["service"]["pipelines"]["traces"]["exporters"]
    targets = set()
    for name in exporters:
        config = collector["exporters"][name]
        assert component_type(name) in {"otlp", "otlp_grpc"}
        host, _ = assert_reaches(services, config["endpoint"], what=f"exporter {name}")
        targets.add(host)
        assert config["tls"]["insecure"] is True
        assert config["retry_on_failure"]["enabled"] is True
        queue = config["sending_queue"]
        assert queue["enabled"] is True
        storage = queue["storage"]
        assert storage in collector["extensions"], f"{name}: queue storage {storage} undefined"
        assert storage in collector["service"]["extensions"], f"{storage} is not enabled"
        assert component_type(storage) == "file_storage"
    assert targets == {"jaeger", "tempo"}


def test_collector_config_and_queue_are_mounted(
    collector: dict[str, Any], services: dict[str, Any]
) -> None:
    service = services["otel-collector"]
    assert "contrib" in image_name(service), "file_storage is a contrib extension"
    config_path = flag_value(command(service), "--config")
    assert mounted_file(service, config_path) == COLLECTOR_FILE
    directory = collector["extensions"]["file_storage"]["directory"]
    volume = named_volume_at(service, directory)
    compaction = collector["extensions"]["file_storage"]["compaction"]["directory"]
    assert named_volume_at(service, compaction) == volume
    # The collector runs as uid 10001: the volume must be handed over before it starts.
    init = services["init-volumes"]
    assert named_volume_at(init, directory) == volume
    assert directory in command(init)
    assert service["depends_on"]["init-volumes"]["condition"] == ("service_completed_successfully")


def test_collector_health_check_binds_all_interfaces(collector: dict[str, Any]) -> None:
    assert host_port(collector["extensions"]["health_check"]["endpoint"])[0] == "0.0.0.0"


# --- Tempo and Prometheus -------------------------------------------------------------------------


def test_tempo_config_is_mounted_and_data_on_volume(
    tempo: dict[str, Any], services: dict[str, Any]
) -> None:
    service = services["tempo"]
    assert mounted_file(service, flag_value(command(service), "-config.file")) == TEMPO_FILE
    paths = [
        tempo["storage"]["trace"]["wal"]["path"],
        tempo["storage"]["trace"]["local"]["path"],
        tempo["metrics_generator"]["storage"]["path"],
        tempo["metrics_generator"]["traces_storage"]["path"],
    ]
    volumes = {named_volume_at(service, path) for path in paths}
    assert len(volumes) == 1
    init = services["init-volumes"]
    (volume,) = volumes
    target = next(m.target for m in mounts(init) if m.source == volume)
    assert target in command(init)
    assert service["depends_on"]["init-volumes"]["condition"] == "service_completed_successfully"


def test_tempo_generates_metrics_for_llm_calls(tempo: dict[str, Any]) -> None:
    processors = tempo["overrides"]["defaults"]["metrics_generator"]["processors"]
    assert {"span-metrics", "service-graphs", "local-blocks"} <= set(processors)
    processor = tempo["metrics_generator"]["processor"]
    dimensions = set(processor["span_metrics"]["dimensions"])
    assert {"gen_ai.request.model", "gen_ai.provider.name", "error.type"} <= dimensions
    assert dimensions & {"gen_ai.agent.name", "letta.agent.id"}
    assert "gen_ai.provider.name" in processor["service_graphs"]["peer_attributes"]
    # LLM calls are CLIENT spans; TraceQL metrics would ignore them otherwise.
    assert processor["local_blocks"]["filter_server_spans"] is False


def test_tempo_remote_writes_to_prometheus(tempo: dict[str, Any], services: dict[str, Any]) -> None:
    (remote,) = tempo["metrics_generator"]["storage"]["remote_write"]
    host, _ = assert_reaches(services, remote["url"], what="Tempo remote_write")
    assert host == "prometheus"
    assert urlsplit(remote["url"]).path == "/api/v1/write"
    args = command(services["prometheus"])
    assert "--web.enable-remote-write-receiver" in args


def test_tempo_receivers_bind_all_interfaces(tempo: dict[str, Any]) -> None:
    for protocol in tempo["distributor"]["receivers"]["otlp"]["protocols"].values():
        assert host_port(protocol["endpoint"])[0] == "0.0.0.0"


def test_prometheus_config_mounted_and_targets_reachable(services: dict[str, Any]) -> None:
    service = services["prometheus"]
    config_path = flag_value(command(service), "--config.file")
    assert mounted_file(service, config_path) == PROMETHEUS_FILE
    config = load_yaml(PROMETHEUS_FILE)
    jobs = {}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                if target.startswith("localhost:"):
                    assert host_port(target)[1] in listening_ports("prometheus", service)
                else:
                    jobs[job["job_name"]] = assert_reaches(services, target, what=job["job_name"])
    assert jobs["letta-otel-exporter"] == ("exporter", Settings.model_fields["health_port"].default)


# --- Grafana ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    config = load_yaml(DATASOURCES_FILE)
    return {source["uid"]: source for source in config["datasources"]}


def test_grafana_provisioning_is_mounted(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    assert mounted_file(grafana, "/etc/grafana/provisioning/datasources/datasources.yaml") == (
        DATASOURCES_FILE
    )
    assert mounted_file(grafana, "/etc/grafana/provisioning/dashboards/dashboards.yaml") == (
        DASHBOARDS_FILE
    )
    (provider,) = load_yaml(DASHBOARDS_FILE)["providers"]
    folder = mounted_file(grafana, provider["options"]["path"])
    assert (folder / DASHBOARD_JSON.name).resolve() == DASHBOARD_JSON
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted_file(grafana, home) == DASHBOARD_JSON


def test_grafana_datasources_point_to_compose_services(
    datasources: dict[str, dict[str, Any]], services: dict[str, Any]
) -> None:
    assert {source["type"] for source in datasources.values()} >= {"tempo", "jaeger", "prometheus"}
    expected = {"tempo": "tempo", "jaeger": "jaeger", "prometheus": "prometheus"}
    for source in datasources.values():
        host, _ = assert_reaches(services, source["url"], what=f"data source {source['name']}")
        assert host == expected[source["type"]]
    assert sum(1 for source in datasources.values() if source.get("isDefault")) == 1


def test_grafana_tempo_links_to_prometheus(datasources: dict[str, dict[str, Any]]) -> None:
    tempo = next(s for s in datasources.values() if s["type"] == "tempo")
    data = tempo["jsonData"]
    assert data["serviceMap"]["datasourceUid"] in datasources
    assert data["tracesToMetrics"]["datasourceUid"] in datasources
    for query in data["tracesToMetrics"]["queries"]:
        assert "$$__tags" in query["query"]
    prometheus = next(s for s in datasources.values() if s["type"] == "prometheus")
    for destination in prometheus["jsonData"]["exemplarTraceIdDestinations"]:
        assert destination["datasourceUid"] in datasources


def test_grafana_provisioning_has_no_unescaped_dollar() -> None:
    # Grafana replaces $NAME and ${NAME} in provisioning files with environment variables.
    text = DATASOURCES_FILE.read_text(encoding="utf-8")
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert not re.search(r"(?<!\$)\$(?!\$)[{A-Za-z_]", code.replace("$$", ""))


# --- the dashboard ------------------------------------------------------------------------------


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))


def tempo_queries(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["query"]
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
        if target["datasource"]["type"] == "tempo"
    ]


def test_dashboard_datasources_are_provisioned(
    dashboard: dict[str, Any], datasources: dict[str, dict[str, Any]]
) -> None:
    for panel in all_panels(dashboard):
        refs = [panel.get("datasource"), *(t.get("datasource") for t in panel.get("targets", []))]
        for ref in refs:
            if ref:
                assert ref["uid"] in datasources, f"{panel['title']}: unknown {ref['uid']}"
                assert ref["type"] == datasources[ref["uid"]]["type"]


def test_dashboard_panels_are_laid_out(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["title"]
        for target in panel.get("targets", []):
            assert target["refId"]


def test_dashboard_tempo_queries_are_traceql(dashboard: dict[str, Any]) -> None:
    queries = tempo_queries(dashboard)
    assert queries
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            if target["datasource"]["type"] != "tempo":
                continue
            query = target["query"]
            assert target["queryType"] == "traceql"
            assert query.startswith("{")
            assert query.count("{") == query.count("}")
            assert query.count('"') % 2 == 0
            assert "$service" in query, "every query follows the service variable"
            is_metrics = re.search(
                r"\|\s*(rate|count_over_time|sum_over_time|quantile_over_time)", query
            )
            if is_metrics:
                assert target["metricsQueryType"] == "range"
            else:
                assert panel["type"] == "table"


def test_dashboard_covers_calls_tokens_latency_errors_agents(dashboard: dict[str, Any]) -> None:
    text = "\n".join(tempo_queries(dashboard))
    assert "rate() by (span.gen_ai.request.model)" in text
    assert "sum_over_time(span.gen_ai.usage.input_tokens)" in text
    assert "sum_over_time(span.gen_ai.usage.output_tokens)" in text
    assert "quantile_over_time(duration, .5, .95)" in text
    assert "status = error" in text
    assert "by (span.gen_ai.agent.name)" in text
    tables = [p for p in all_panels(dashboard) if p["type"] == "table"]
    assert tables, "a table of recent LLM calls"
    (target,) = tables[0]["targets"]
    assert target["tableType"] == "spans"
    assert "select(" in target["query"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["service"]["query"] == Settings.model_fields["service_name"].default


def prometheus_name(name: str, unit: str, *, counter: bool = False) -> str:
    """A metric's name in Prometheus after the Collector's OTLP translation (default suffixes):
    dots become underscores, a unit in braces is dropped, ``s`` becomes ``_seconds``, and
    monotonic sums end in ``_total``."""
    base = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    units = {"s": "seconds"}
    if unit and not unit.startswith("{"):
        base += "_" + units.get(unit, unit)
    return base + ("_total" if counter else "")


def prometheus_queries(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
        if target["datasource"]["type"] == "prometheus"
    ]


def test_dashboard_has_genai_metrics_panels_with_the_prometheus_names(
    dashboard: dict[str, Any],
) -> None:
    text = "\n".join(prometheus_queries(dashboard))
    tokens = prometheus_name(genai_metrics.TOKEN_USAGE_METRIC, metric_names.TOKEN_USAGE_UNIT)
    duration = prometheus_name(genai_metrics.DURATION_METRIC, metric_names.DURATION_UNIT)
    cost = prometheus_name(genai_metrics.COST_METRIC, metric_names.COST_UNIT, counter=True)
    unpriced = prometheus_name(
        genai_metrics.UNPRICED_METRIC, metric_names.UNPRICED_UNIT, counter=True
    )
    assert tokens == "gen_ai_client_token_usage"
    assert duration == "gen_ai_client_operation_duration_seconds"
    assert f"{duration}_count" in text, "calls"
    assert f"{tokens}_sum" in text, "tokens"
    assert f"histogram_quantile(0.5, sum by (le, gen_ai_request_model) (rate({duration}_bucket" in (
        text
    )
    assert (
        f"histogram_quantile(0.95, sum by (le, gen_ai_request_model) (rate({duration}_bucket"
        in (text)
    )
    assert "error_type" in text, "errors"
    assert cost in text
    assert unpriced in text
    assert "by (gen_ai_agent_name)" in text
    assert "gen_ai_token_type" in text
    for query in prometheus_queries(dashboard):
        if "gen_ai_client" in query:
            assert 'job="$service"' in query, "every query follows the service variable"
            assert query.count("(") == query.count(")")
    exemplars = [
        t
        for panel in all_panels(dashboard)
        for t in panel.get("targets", [])
        if f"{duration}_bucket" in t.get("expr", "")
    ]
    assert all(t.get("exemplar") for t in exemplars), "duration buckets link to their spans"


def test_collector_sends_metrics_to_prometheus(
    collector: dict[str, Any], services: dict[str, Any]
) -> None:
    pipeline = collector["service"]["pipelines"]["metrics"]
    assert pipeline["receivers"] == ["otlp"]
    assert pipeline["processors"][0] == "memory_limiter"
    assert "deltatocumulative" in pipeline["processors"], "delta senders become cumulative"
    (exporter,) = pipeline["exporters"]
    assert component_type(exporter) == "prometheusremotewrite"
    url = collector["exporters"][exporter]["endpoint"]
    host, _ = assert_reaches(services, url, what="prometheusremotewrite")
    assert host == "prometheus"
    assert urlsplit(url).path == "/api/v1/write"
    args = command(services["prometheus"])
    assert "--web.enable-remote-write-receiver" in args
    assert "--enable-feature=exemplar-storage" in args


# --- the example TOML ---------------------------------------------------------------------------


def example_lines() -> list[str]:
    return EXAMPLE_TOML.read_text(encoding="utf-8").splitlines()


def key_line(field: str) -> tuple[int, bool]:
    """Where ``field`` is set in the example, and whether that line is commented out."""
    for index, line in enumerate(example_lines()):
        match = re.match(rf"^(#\s*)?{field}\s*=", line)
        if match:
            return index, match.group(1) is not None
    raise AssertionError(f"{field} is not in {EXAMPLE_TOML.name}")


def test_example_toml_loads_with_no_unknown_key() -> None:
    settings = Settings.load(config_file=EXAMPLE_TOML)  # extra="forbid": a typo raises
    assert settings == Settings.load(), "the example's values are the defaults"


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_example_toml_documents_field(field: str) -> None:
    index, commented = key_line(field)
    default = Settings.model_fields[field].get_default(call_default_factory=True)
    assert commented == (default is None), (
        f"{field}: a key line for a default, a commented line for an unset setting"
    )
    lines = example_lines()
    comment: list[str] = []
    for line in reversed(lines[:index]):
        if not line.startswith("#") or re.match(r"^#\s*\w+\s*=", line):
            break
        comment.append(line)
    text = "\n".join(comment)
    assert len(comment) >= 2, f"{field}: say what it does and its environment variable"
    for name in env_names(field):
        assert name in text, f"{field}: the comment does not name {name}"


def test_example_toml_commented_values_are_valid(tmp_path: Path) -> None:
    """Uncommenting the examples of the unset settings gives a valid configuration."""
    keys = set()
    lines = []
    for line in example_lines():
        match = re.match(r"^#\s*(\w+)\s*=", line)
        if match:
            assert match.group(1) in Settings.model_fields, f"not a setting: {line}"
            keys.add(match.group(1))
            line = line.lstrip("#").strip()
        lines.append(line)
    assert keys
    path = tmp_path / "all.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    settings = Settings.load(config_file=path)
    for key in keys:
        assert getattr(settings, key) is not None, key


def test_example_toml_keeps_secrets_commented() -> None:
    data = tomllib.loads(EXAMPLE_TOML.read_text(encoding="utf-8"))
    for field in ("letta_api_key", "otlp_headers", "database_url"):
        assert field not in data
        assert key_line(field)[1]


# --- the Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_slim_final(final_stage: list[Instruction]) -> None:
    global_args, stages = dockerfile_stages()
    assert len(stages) >= 2
    base = final_stage[0].args.split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base)
    assert re.fullmatch(r"python:3\.1[12]-slim(-\w+)?", base), base
    copies = instructions(final_stage, "COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"], "only the venv comes in"
    builder = stages[0]
    assert "AS builder" in builder[0].args
    assert any("pip" in run for run in instructions(builder, "RUN"))


def test_dockerfile_final_stage_has_no_build_tools(final_stage: list[Instruction]) -> None:
    text = " ".join(f"{i.keyword} {i.args}" for i in final_stage)
    for tool in ("gcc", "build-essential", "apt-get install", "make ", "g++", "pip install"):
        assert tool not in text, tool


def test_dockerfile_runs_as_fixed_non_root_user(final_stage: list[Instruction]) -> None:
    (user,) = instructions(final_stage, "USER")
    uid = user.split(":")[0]
    assert uid not in {"root", "0"}
    assert uid == "10001"


def test_dockerfile_entrypoint_is_the_console_script(final_stage: list[Instruction]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = instructions(final_stage, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["letta-otel-exporter"]
    assert "letta-otel-exporter" in scripts
    (cmd,) = instructions(final_stage, "CMD")
    assert json.loads(cmd) == ["run"]


def test_dockerfile_cmd_is_a_cli_command(final_stage: list[Instruction]) -> None:
    # Fails (rather than skips) while exporter.cli cannot be imported: the image would not start.
    names = cli_command_names()
    (cmd,) = instructions(final_stage, "CMD")
    assert json.loads(cmd)[0] in names
    assert names >= CLI_COMMANDS


def test_dockerfile_healthcheck_uses_the_health_port(
    final_stage: list[Instruction], image_env: dict[str, str]
) -> None:
    (healthcheck,) = instructions(final_stage, "HEALTHCHECK")
    exec_form = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert exec_form[0] == "python", "no curl or wget in the slim image"
    code = exec_form[-1]
    assert "urllib.request" in code
    assert "http://127.0.0.1:" in code
    assert "/healthz" in code
    default_port = Settings.model_fields["health_port"].default
    assert f"'{default_port}'" in code
    assert image_env["LETTA_EXPORTER_HEALTH_PORT"] == str(default_port)
    exposed = {p for e in instructions(final_stage, "EXPOSE") for p in e.split()}
    assert str(default_port) in exposed


def test_dockerfile_environment_is_valid_settings(
    image_env: dict[str, str], final_stage: list[Instruction], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in image_env.items():
        if key.startswith("LETTA_EXPORTER_"):
            monkeypatch.setenv(key, value)
    settings = Settings.load()  # unknown LETTA_EXPORTER_ names and bad values raise
    assert settings.sink == "otlp"
    assert settings.log_format == "json"
    assert image_env["PYTHONUNBUFFERED"] == "1"
    (volume,) = (json.loads(v)[0] for v in instructions(final_stage, "VOLUME"))
    for path in (settings.state_path, settings.dead_letter_path, settings.output):
        assert PurePosixPath(path).parent == PurePosixPath(volume), path


def test_dockerfile_labels(final_stage: list[Instruction]) -> None:
    labels = {}
    for args in instructions(final_stage, "LABEL"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            labels[key] = value
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.title"] == project["name"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.description"]
    assert "org.opencontainers.image.version" in labels


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    result = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        candidates = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch(prefix, c) for prefix in prefixes for c in candidates):
            result = not negate
    return result


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    _, stages = dockerfile_stages()
    sources = []
    for args in instructions(stages[0], "COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        sources += parts[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f".dockerignore drops {source}, which the build copies"
    for path in (
        ".venv",
        ".git",
        "tests",
        "bench",
        ".pytest_cache",
        ".ruff_cache",
        "exporter/__pycache__",
        "letta-otel-exporter.state.json",
        "letta-otel-exporter.dead-letter.jsonl",
        "letta-traces.otlp.jsonl",
        ".env",
    ):
        assert ignored(path), f".dockerignore should exclude {path}"


# --- the docs -----------------------------------------------------------------------------------


def config_doc_rows() -> dict[str, str]:
    """The rows of the README's configuration reference (its section only)."""
    text = CONFIG_DOC.read_text(encoding="utf-8")
    section = text[text.index("\n## Configuration reference") :]
    section = section[: section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\|\s*`([a-z][a-z0-9_]*)`\s*\|", line)
        if match:
            rows[match.group(1)] = line
    return rows


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_configuration_doc_has_every_setting(field: str) -> None:
    row = config_doc_rows().get(field)
    assert row, f"README.md has no row for {field}"
    for name in env_names(field):
        assert f"`{name}`" in row, f"{field}: the row does not name {name}"


def test_configuration_doc_names_only_real_settings() -> None:
    assert set(config_doc_rows()) <= set(Settings.model_fields)


def test_configuration_doc_flags_exist() -> None:
    options = {
        opt
        for cmd in cli_group().commands.values()
        for param in cmd.params
        for opt in (*param.opts, *getattr(param, "secondary_opts", []))
    }
    documented = {
        flag for row in config_doc_rows().values() for flag in re.findall(r"`(--[\w-]+)", row)
    }
    assert documented, "the table names the flags"
    assert documented <= options, f"flags in README.md but not in the CLI: {documented - options}"


def test_deploy_doc_lists_the_published_ports(services: dict[str, Any]) -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    for name, service in services.items():
        for port in published_ports(service):
            assert re.search(rf"\|\s*{port.host}\s*\|", text), f"{name}'s port {port.host}"


def deploy_doc_manifests() -> list[dict[str, Any]]:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc and "kind" in doc]


def shard_env(container: dict[str, Any]) -> tuple[str, int]:
    """The variable a LETTA_EXPORTER_SHARD value refers to, and the shard count it names."""
    env = container["env"]
    names = [item["name"] for item in env]
    (shard,) = (item for item in env if item["name"] == "LETTA_EXPORTER_SHARD")
    match = re.fullmatch(r"\$\((\w+)\)/(\d+)", shard["value"])
    assert match, shard["value"]
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert match.group(1) in names[: names.index("LETTA_EXPORTER_SHARD")]
    return match.group(1), int(match.group(2))


def test_deploy_doc_kubernetes_manifests() -> None:
    manifests = {doc["kind"]: doc for doc in deploy_doc_manifests()}
    statefulset = manifests["StatefulSet"]
    spec = statefulset["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    _, count = shard_env(container)
    assert count == spec["replicas"]
    volume_dir = json.loads(instructions(dockerfile_stages()[1][-1], "VOLUME")[0])[0]
    claims = {claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]}
    mounts_by_name = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert any(mounts_by_name.get(claim) == volume_dir for claim in claims)
    assert spec["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    health_port = Settings.model_fields["health_port"].default
    assert container["ports"][0]["containerPort"] == health_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["serviceName"] == manifests["Service"]["metadata"]["name"]

    job = manifests["Job"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    assert container["args"][0] in CLI_COMMANDS
    _, count = shard_env(container)
    assert count == job["completions"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    settings_env = {
        k: v for k, v in env.items() if k.startswith("LETTA_EXPORTER_") and "$(" not in v
    }
    for name in settings_env:
        assert name.removeprefix("LETTA_EXPORTER_").lower() in Settings.model_fields, name


# --- the socket and the database ----------------------------------------------------------------

K8S_SIDECAR = CONFIG / "kubernetes" / "letta-with-exporter-sidecar.yaml"


def run_flags(args: list[str]) -> dict[str, Any]:
    """The flags a `run` command line gives (parsed by the CLI itself)."""
    command = cli_group().commands[args[0]]
    context = command.make_context(args[0], list(args[1:]))
    return {k: v for k, v in context.params.items() if v not in (None, (), False)}


def test_compose_letta_pushes_to_the_exporters_socket(services: dict[str, Any]) -> None:
    letta = environment(services["letta"])
    backends = letta["LETTA_TELEMETRY_PROVIDER_TRACE_BACKEND"].split(",")
    assert backends[0] == "postgres", "postgres first: it serves the API's reads"
    assert "socket" in backends
    path = PurePosixPath(letta["TELEMETRY_SOCKET"])
    exporter = services["exporter"]
    flags = run_flags(exporter["command"])
    assert exporter["command"][0] == "run"
    assert PurePosixPath(str(flags["socket"])) == path
    # One named volume holds the socket's directory in both containers.
    letta_volume = named_volume_at(services["letta"], str(path))
    assert letta_volume is not None
    assert named_volume_at(exporter, str(path)) == letta_volume
    # ... handed to the exporter's uid before it starts.
    init = services["init-volumes"]
    assert named_volume_at(init, str(path)) == letta_volume
    assert str(path.parent) in init["command"]
    assert "10001:10001" in init["command"]
    assert exporter["depends_on"]["init-volumes"]["condition"] == "service_completed_successfully"
    # The API poll stays on, to reconcile what the socket missed.
    assert host_port(environment(exporter)["LETTA_BASE_URL"])[0] == "letta"


def test_compose_journal_is_on_the_state_volume(
    services: dict[str, Any], image_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = services["exporter"]
    for key, value in {**image_env, **environment(exporter)}.items():
        if key.startswith(("LETTA_", "OTEL_")):
            monkeypatch.setenv(key, value)
    flags = run_flags(exporter["command"])
    settings = Settings.load(socket=flags["socket"])
    assert named_volume_at(exporter, str(settings.effective_journal_dir)) == "exporter-state"


def sidecar_items() -> dict[str, dict[str, Any]]:
    data = load_yaml(K8S_SIDECAR)
    assert data["kind"] == "List"
    return {item["kind"]: item for item in data["items"]}


def test_kubernetes_sidecar_manifest_shares_the_socket_with_letta() -> None:
    items = sidecar_items()
    pod = items["Deployment"]["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    (letta,) = pod["containers"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar"
    flags = run_flags(sidecar["args"])
    socket_path = PurePosixPath(str(flags["socket"]))
    letta_env = {e["name"]: e.get("value") for e in letta["env"]}
    assert PurePosixPath(letta_env["TELEMETRY_SOCKET"]) == socket_path
    assert letta_env["LETTA_TELEMETRY_PROVIDER_TRACE_BACKEND"].split(",")[0] == "postgres"
    assert "socket" in letta_env["LETTA_TELEMETRY_PROVIDER_TRACE_BACKEND"].split(",")
    volumes = {v["name"]: v for v in pod["volumes"]}

    def volume_at(container: dict[str, Any], path: PurePosixPath) -> str:
        (name,) = [
            m["name"]
            for m in container["volumeMounts"]
            if path == PurePosixPath(m["mountPath"])
            or PurePosixPath(m["mountPath"]) in path.parents
        ]
        return str(name)

    shared = volume_at(sidecar, socket_path)
    assert volume_at(letta, socket_path) == shared
    assert "emptyDir" in volumes[shared]
    # The socket is mode 0660 with the exporter's group: fsGroup gives Letta's process that group.
    assert pod["securityContext"]["fsGroup"] == sidecar["securityContext"]["runAsGroup"]
    assert Settings.model_fields["socket_mode"].default == "0660"
    # Startup waits for the socket, so Letta's first traces find it.
    assert socket_path.as_posix() in sidecar["startupProbe"]["exec"]["command"]
    # The journal (beside the state file) is on the claim.
    volume_dir = json.loads(instructions(dockerfile_stages()[1][-1], "VOLUME")[0])[0]
    state = volumes[volume_at(sidecar, PurePosixPath(volume_dir))]
    claim = state["persistentVolumeClaim"]["claimName"]
    assert claim == items["PersistentVolumeClaim"]["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert host_port(env["LETTA_BASE_URL"])[0] == "127.0.0.1", "the API of the same pod"
    health_port = Settings.model_fields["health_port"].default
    assert sidecar["ports"][0]["containerPort"] == health_port


def test_readme_shows_the_sidecar_manifest_as_in_config() -> None:
    shown = {doc["kind"]: doc for doc in deploy_doc_manifests()}
    for kind, item in sidecar_items().items():
        assert shown[kind] == item, kind


def test_readme_grants_the_read_only_role_every_table_the_source_reads() -> None:
    from exporter.source._pg_schema import OPTIONAL, REQUIRED

    text = DEPLOY_DOC.read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```sql\n(.*?)```", text, re.DOTALL) if "GRANT" in b]
    grant = re.search(r"GRANT SELECT ON (.*?)\s+TO (\w+);", block, re.DOTALL)
    assert grant, block
    tables = {t.strip() for t in grant.group(1).split(",")}
    assert tables == set(REQUIRED) | set(OPTIONAL)
    role = grant.group(2)
    assert f"CREATE ROLE {role} LOGIN" in block
    assert f"ALTER ROLE {role} SET default_transaction_read_only = on;" in block
    assert "INSERT" not in block
    assert "UPDATE" not in block

# syntax=docker/dockerfile:1
#
# letta-otel-exporter: reads the LLM provider traces a Letta server records and ships each one as
# an OpenTelemetry GenAI span over OTLP. Runs as a sidecar next to Letta (`run`, the default
# command) or as a one-shot backfill (`export --since 7d`).
#
#   docker build -t letta-otel-exporter .
#   docker run --rm \
#     -e LETTA_BASE_URL=http://letta:8283 \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4317 -e OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
#     -v letta-otel-exporter-state:/var/lib/letta-otel-exporter \
#     letta-otel-exporter
#
# Configuration is by environment only (see the README's configuration reference); a TOML file can be mounted
# and named with LETTA_EXPORTER_CONFIG. The checkpoint lives in the volume, so a restarted
# container resumes where it stopped.

# The Python minor version CI tests and the lock files are resolved for (requirements/).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: build the project's wheel and install it, with its dependencies, into a venv -------
# Every dependency ships binary wheels (grpcio, protobuf, pydantic-core), so no compiler is needed
# here either; the final stage gets the venv and nothing else from this stage.
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/runtime.lock ./requirements/
COPY exporter ./exporter

# The dependencies at the versions of the lock file (the ones CI tested), then the project itself.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps -r requirements/runtime.lock \
    && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
    && /opt/venv/bin/pip uninstall --yes pip

# ---- final: the slim runtime, the venv, a non-root user ------------------------------------------
FROM ${PYTHON_IMAGE} AS final

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="letta-otel-exporter" \
      org.opencontainers.image.description="Exports Letta provider traces (LLM calls) as OpenTelemetry GenAI spans over OTLP." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed uid/gid, so a Kubernetes securityContext (runAsUser / fsGroup 10001) and volume
# permissions can be set in advance. The state directory is created owned by it: Docker copies
# that ownership into a new named volume mounted there.
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/letta-otel-exporter --shell /usr/sbin/nologin exporter \
    && mkdir -p /var/lib/letta-otel-exporter \
    && chown 10001:10001 /var/lib/letta-otel-exporter

COPY --from=builder /opt/venv /opt/venv

# Defaults for a container; every one can be overridden with -e / env:.
#   LETTA_EXPORTER_SINK=otlp      never fall back to a file silently: set OTEL_EXPORTER_OTLP_ENDPOINT
#   LETTA_EXPORTER_LOG_FORMAT     one JSON object per line, for log collectors
#   state, dead letters, output   all in the volume
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LETTA_EXPORTER_STATE_PATH=/var/lib/letta-otel-exporter/state.json \
    LETTA_EXPORTER_DEAD_LETTER_PATH=/var/lib/letta-otel-exporter/dead-letter.jsonl \
    LETTA_EXPORTER_OUTPUT=/var/lib/letta-otel-exporter/letta-traces.otlp.jsonl \
    LETTA_EXPORTER_SINK=otlp \
    LETTA_EXPORTER_LOG_FORMAT=json \
    LETTA_EXPORTER_HEALTH_HOST=0.0.0.0 \
    LETTA_EXPORTER_HEALTH_PORT=9464

WORKDIR /var/lib/letta-otel-exporter
USER 10001:10001
VOLUME ["/var/lib/letta-otel-exporter"]

# /healthz, /readyz and /metrics of the `run` sidecar.
EXPOSE 9464

# The slim image has no curl: ask /healthz with the standard library (a non-2xx answer or no
# answer raises, which exits 1). Follows LETTA_EXPORTER_HEALTH_PORT if it is overridden.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LETTA_EXPORTER_HEALTH_PORT', '9464') + '/healthz', timeout=4)"]

ENTRYPOINT ["letta-otel-exporter"]
CMD ["run"]

"""Which GenAI provider a call went to, and where (``server.address`` / ``server.port``).

``gen_ai.provider.name`` takes the conventions' well-known values where one applies. It is read,
in order, from ``llm_config.model_endpoint_type`` (Letta's name for the wire API: ``openai``,
``anthropic``, ``google_ai`` ...), the endpoint's host (Azure, Google, Bedrock hosts), Letta's
provider name (``llm_config.provider_name`` / ``Step.provider_name``) and, last, the shape of
the bodies. Letta endpoint types with no well-known value (``ollama``, ``vllm``, ``together``
...) are passed through as custom values, as the conventions allow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final
from urllib.parse import urlsplit

from ._semconv import (
    PROVIDER_ANTHROPIC,
    PROVIDER_AWS_BEDROCK,
    PROVIDER_AZURE_OPENAI,
    PROVIDER_GCP_GEMINI,
    PROVIDER_GCP_GEN_AI,
    PROVIDER_GCP_VERTEX_AI,
    PROVIDER_OPENAI,
)
from ._shapes import Shape

__all__ = ["Endpoint", "parse_endpoint", "provider_name"]

# Letta's LLMConfig.model_endpoint_type (and ProviderType) values -> gen_ai.provider.name.
_ENDPOINT_TYPE_MAP: Final = {
    "openai": PROVIDER_OPENAI,
    "anthropic": PROVIDER_ANTHROPIC,
    "google_ai": PROVIDER_GCP_GEMINI,
    "google_vertex": PROVIDER_GCP_VERTEX_AI,
    "azure": PROVIDER_AZURE_OPENAI,
    "bedrock": PROVIDER_AWS_BEDROCK,
    "groq": "groq",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "moonshot": "moonshot_ai",
    "ibm_watsonx": "ibm.watsonx.ai",
}

# Host suffixes that identify the provider whatever the wire API (checked in order).
_HOST_SUFFIX_MAP: Final = (
    (".openai.azure.com", PROVIDER_AZURE_OPENAI),
    ("generativelanguage.googleapis.com", PROVIDER_GCP_GEMINI),
    ("aiplatform.googleapis.com", PROVIDER_GCP_VERTEX_AI),
    (".amazonaws.com", PROVIDER_AWS_BEDROCK),
    ("api.openai.com", PROVIDER_OPENAI),
    ("api.anthropic.com", PROVIDER_ANTHROPIC),
    ("api.groq.com", "groq"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.deepseek.com", "deepseek"),
    ("api.x.ai", "x_ai"),
)

# What a body shape says about the provider when nothing else does.
_SHAPE_PROVIDER_MAP: Final = {
    Shape.OPENAI_CHAT: PROVIDER_OPENAI,
    Shape.OPENAI_RESPONSES: PROVIDER_OPENAI,
    Shape.ANTHROPIC: PROVIDER_ANTHROPIC,
    Shape.GOOGLE: PROVIDER_GCP_GEN_AI,
}

_HOST: Final = re.compile(r"[A-Za-z0-9._%:~-]+")
_DEFAULT_PORTS: Final = {"https": 443, "http": 80, "grpcs": 443, "wss": 443, "ws": 80}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A model endpoint's host and port (never its credentials, path or query)."""

    host: str
    port: int | None


def parse_endpoint(url: str | None) -> Endpoint | None:
    """``server.address`` and ``server.port`` from a model endpoint URL, or ``None``.

    A URL without a scheme (``localhost:8080``) is read as host:port; the port defaults to the
    scheme's (443 for https, 80 for http) because the conventions require ``server.port``
    whenever ``server.address`` is set.
    """
    if not isinstance(url, str) or not url.strip():
        return None
    return _parse_endpoint(url)


@lru_cache(maxsize=256)
def _parse_endpoint(url: str) -> Endpoint | None:
    """:func:`parse_endpoint` of a str, remembered: an agent sends every call to one endpoint,
    and ``urlsplit`` with its checks cost more than the rest of the provider's attributes."""
    text = url.strip()
    if "://" not in text:
        text = f"//{text}"
    try:
        parts = urlsplit(text)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host or not _HOST.fullmatch(host):
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme.lower())
    return Endpoint(host, port)


def provider_name(
    endpoint_type: object,
    endpoint: Endpoint | None,
    letta_provider: object,
    shape: Shape,
) -> str | None:
    """The ``gen_ai.provider.name`` of a call (see the module docstring), or ``None``."""
    if isinstance(endpoint_type, str) and endpoint_type:
        mapped = _ENDPOINT_TYPE_MAP.get(endpoint_type.lower())
        if mapped:
            return _refine_by_host(mapped, endpoint)
    if endpoint is not None:
        for suffix, name in _HOST_SUFFIX_MAP:
            if endpoint.host.lower().endswith(suffix):
                return name
    if isinstance(letta_provider, str) and letta_provider:
        mapped = _ENDPOINT_TYPE_MAP.get(letta_provider.lower())
        if mapped:
            return mapped
    if isinstance(endpoint_type, str) and endpoint_type:
        return endpoint_type  # a custom value (ollama, vllm, together, ...)
    return _SHAPE_PROVIDER_MAP.get(shape)


def _refine_by_host(mapped: str, endpoint: Endpoint | None) -> str:
    # An "openai" endpoint type pointed at Azure is Azure OpenAI.
    if (
        mapped == PROVIDER_OPENAI
        and endpoint
        and endpoint.host.lower().endswith(".openai.azure.com")
    ):
        return PROVIDER_AZURE_OPENAI
    return mapped

"""TLS material for the OTLP exporters, read and checked once when the exporter is built.

Why check here: gRPC accepts any bytes as a certificate and only fails at connect time with a
vague ``UNAVAILABLE``; a wrong path or a key that does not match its certificate should instead
stop the exporter at start-up with one line naming the setting and the file.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

__all__ = ["TlsFiles"]


def _read(setting: str, path: Path | str | None) -> bytes | None:
    if path is None or str(path) == "":
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(setting, f"{path} is not a PEM file")
    return data


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files named by ``OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`` and its siblings.

    Attributes:
        certificate_file: trusted CA certificates for the server (``None``: system roots).
        client_key_file: private key for mutual TLS.
        client_certificate_file: certificate chain for mutual TLS.
        root_certificates: the contents of ``certificate_file``.
        private_key: the contents of ``client_key_file``.
        certificate_chain: the contents of ``client_certificate_file``.
    """

    certificate_file: Path | None = None
    client_key_file: Path | None = None
    client_certificate_file: Path | None = None
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None

    @classmethod
    def load(
        cls,
        *,
        certificate_file: Path | str | None = None,
        client_key_file: Path | str | None = None,
        client_certificate_file: Path | str | None = None,
    ) -> TlsFiles:
        """Read and check the files (``None``: not configured).

        Raises:
            ConfigError: a file cannot be read or is not PEM, only one of the client key and
                client certificate is given, or they do not match. The message names the
                setting and the path, never the contents.
        """
        if (client_key_file is None) != (client_certificate_file is None):
            given, missing = (
                ("otlp_client_key", "otlp_client_certificate")
                if client_certificate_file is None
                else ("otlp_client_certificate", "otlp_client_key")
            )
            raise ConfigError(given, f"mutual TLS needs {missing} as well")
        files = cls(
            certificate_file=Path(certificate_file) if certificate_file is not None else None,
            client_key_file=Path(client_key_file) if client_key_file is not None else None,
            client_certificate_file=(
                Path(client_certificate_file) if client_certificate_file is not None else None
            ),
            root_certificates=_read("otlp_certificate", certificate_file),
            private_key=_read("otlp_client_key", client_key_file),
            certificate_chain=_read("otlp_client_certificate", client_certificate_file),
        )
        files.ssl_context()  # the checks: parseable certificates, key matching its certificate
        return files

    @property
    def configured(self) -> bool:
        """Whether any file was given."""
        return self.root_certificates is not None or self.certificate_chain is not None

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSL context: trusts ``certificate_file`` (else the system), has the client pair.

        Raises:
            ConfigError: the files do not hold valid certificates, or the key does not match.
        """
        try:
            context = ssl.create_default_context(
                cadata=self.root_certificates.decode("ascii", "replace")
                if self.root_certificates is not None
                else None
            )
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                "otlp_certificate", f"{self.certificate_file} holds no valid certificate ({exc})"
            ) from None
        if self.client_certificate_file is not None and self.client_key_file is not None:
            try:
                context.load_cert_chain(self.client_certificate_file, self.client_key_file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    "otlp_client_certificate",
                    f"{self.client_certificate_file} and {self.client_key_file} are not a "
                    f"matching certificate and key ({exc})",
                ) from None
        return context

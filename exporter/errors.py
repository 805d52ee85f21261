"""The exporter's errors.

Every failure a user can cause or meet (bad config, Letta unreachable, a malformed record, a
collector that refuses) is one of these, so the CLI can print one clear line and exit with the
right code instead of a traceback. Foreign errors (httpx, pydantic, grpc) are translated into
these at the stage that meets them, with ``raise ... from exc``.

    ExporterError
    ├── ConfigError            (also ValueError)  a setting has a value that is not allowed
    │   └── SocketPathError                       the socket path cannot be listened on
    │       └── SocketInUseError                  a live listener already holds the path
    ├── SourceError                               reading from Letta or from a file failed
    │   ├── SourceHTTPError                       Letta answered an error status (after retries)
    │   ├── SourceConnectionError                 Letta could not be reached (after retries)
    │   ├── SourceResponseError                   Letta answered something unreadable
    │   ├── JournalError                          the socket source's journal cannot be used
    │   └── DatabaseError                         reading Letta's PostgreSQL failed (run time)
    │       └── DatabaseConfigError               refused credentials, missing table/column
    ├── RecordInvalidError     (also ValueError)  a record does not match its schema
    ├── SinkError                                 the collector or output refused or failed
    │   └── UndeliveredError                      a batch not accepted before the job's deadline
    │       └── DeliveryBlockedError              the collector refuses our setup (credential,
    │                                             path, protocol): nothing can be delivered
    └── CheckpointError                           the state file cannot be read or written

    Stopped                                       not an error: shutdown was requested while a
                                                  batch was undelivered (the checkpoint waits)

No error ever carries an API key, a bearer token or OTLP header values: messages name URLs
(without credentials), status codes, record ids and field names only.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatabaseConfigError",
    "DatabaseError",
    "DeliveryBlockedError",
    "ExporterError",
    "JournalError",
    "RecordInvalidError",
    "SinkError",
    "SocketInUseError",
    "SocketPathError",
    "SourceConnectionError",
    "SourceError",
    "SourceHTTPError",
    "SourceResponseError",
    "Stopped",
    "UndeliveredError",
]


class ExporterError(Exception):
    """Base of every error the exporter raises on purpose."""


class ConfigError(ExporterError, ValueError):
    """A setting has a value that is not allowed.

    Args:
        setting: the name the user wrote it under (env var, flag or TOML key).
        message: what is wrong and what is allowed.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


class SocketPathError(ConfigError):
    """The socket path cannot be listened on (a regular file or directory, too long, no access).

    Args:
        path: the socket path as configured.
        message: what is in the way and what to do about it.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__("socket", f"{path}: {message}")
        self.path = path


class SocketInUseError(SocketPathError):
    """Another process is listening on the socket path (it answered a connection).

    Args:
        path: the socket path as configured.
    """

    def __init__(self, path: str) -> None:
        super().__init__(
            path, "another listener is serving this socket; stop it or choose another path"
        )


class SourceError(ExporterError):
    """Reading provider traces (from Letta or a file) failed."""


class SourceHTTPError(SourceError):
    """Letta answered an error status, after any retries were spent.

    Args:
        url: the request URL (never with credentials).
        status_code: the last HTTP status received.
        detail: a short excerpt of the server's answer, if any.
        attempts: how many times the request was sent.
    """

    def __init__(
        self, url: str, status_code: int, *, detail: str | None = None, attempts: int = 1
    ) -> None:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        text = f"Letta answered HTTP {status_code} for {url}{tries}"
        if detail:
            text += f": {detail}"
        super().__init__(text)
        self.url = url
        self.status_code = status_code
        self.detail = detail
        self.attempts = attempts


class SourceConnectionError(SourceError):
    """Letta could not be reached (connection refused, timeout), after retries.

    Args:
        url: the request URL.
        reason: the kind of failure, e.g. ``ConnectTimeout``.
        attempts: how many times the request was sent.
    """

    def __init__(self, url: str, reason: str, *, attempts: int = 1) -> None:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"could not reach Letta at {url}{tries}: {reason}")
        self.url = url
        self.reason = reason
        self.attempts = attempts


class SourceResponseError(SourceError):
    """Letta answered 2xx with a body that is not what the route returns.

    Args:
        url: the request URL.
        message: what was wrong with the body.
    """

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"unreadable answer from {url}: {message}")
        self.url = url
        self.message = message


class JournalError(SourceError):
    """The socket source's journal directory cannot be opened, written or read.

    Args:
        path: the directory or file.
        message: what went wrong.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"journal {path}: {message}")
        self.path = path
        self.message = message


class RecordInvalidError(ExporterError, ValueError):
    """A record (ProviderTrace, Step, ...) does not match its schema.

    Args:
        kind: the record type, e.g. ``ProviderTrace``.
        record_id: the record's id when it could be read, else ``None``.
        field: the dotted path of the first offending field, or ``None`` for the whole record.
        message: what is wrong with it.
        step_id: the step the record was fetched for, when it came from Letta (a body too
            broken to read has no id of its own, but it is still that step's problem).
    """

    def __init__(
        self,
        kind: str,
        record_id: str | None,
        field: str | None,
        message: str,
        *,
        step_id: str | None = None,
    ) -> None:
        where = f" field {field!r}" if field else ""
        ident = record_id or "<no id>"
        of_step = f" of step {step_id}" if step_id else ""
        super().__init__(f"invalid {kind} {ident}{of_step}:{where} {message}")
        self.kind = kind
        self.record_id = record_id
        self.field = field
        self.message = message
        self.step_id = step_id


class SinkError(ExporterError):
    """The collector or the output refused the spans or could not be reached.

    Args:
        target: where the spans were going (endpoint URL or file path; never headers).
        message: what went wrong.
    """

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"export to {target} failed: {message}")
        self.target = target
        self.message = message


class UndeliveredError(SinkError):
    """The collector did not accept a batch before the one-shot deadline.

    Args:
        trace_ids: the provider trace ids (or step ids) in the batch.
        reason: the last failure.
        target: where the batch was going, when known.
    """

    def __init__(self, trace_ids: Sequence[str], reason: str, *, target: str = "the sink") -> None:
        shown = ", ".join(trace_ids[:5]) + (" ..." if len(trace_ids) > 5 else "")
        ExporterError.__init__(self, f"{len(trace_ids)} traces not delivered ({reason}): {shown}")
        self.target = target
        self.message = reason
        self.trace_ids = list(trace_ids)
        self.reason = reason


class DeliveryBlockedError(UndeliveredError):
    """The collector refuses the exporter's configuration (a credential, the URL path or method,
    the protocol), so no batch can be delivered until it is fixed.

    Nothing was dead-lettered and the checkpoint did not move: a run with the setting fixed
    delivers everything.

    Args:
        trace_ids: the provider trace ids (or step ids) of the batch that was held.
        reason: the collector's answer (status and message, never header values).
        target: where the batch was going, when known.
    """

    def __init__(self, trace_ids: Sequence[str], reason: str, *, target: str = "the sink") -> None:
        super().__init__(trace_ids, reason, target=target)
        ExporterError.__init__(
            self,
            f"the collector refuses this exporter's configuration: {reason}; nothing was "
            "dead-lettered and the checkpoint did not move: fix the setting and run again",
        )


class CheckpointError(ExporterError):
    """The checkpoint state file cannot be read or written.

    Args:
        path: the state file.
        message: what went wrong.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"checkpoint {path}: {message}")
        self.path = path
        self.message = message


class DatabaseError(SourceError):
    """Reading Letta's PostgreSQL database failed (at run time: the CLI exits 1).

    Args:
        target: the database, as a masked DSN (``postgresql://user:***@host:5432/letta``).
        message: what went wrong, naming the table, column or setting involved.
    """

    #: A setting (the DSN, the credentials, the database's schema) must change: the CLI exits 2.
    configuration: bool = False

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"database {target}: {message}")
        self.target = target
        self.message = message


class DatabaseConfigError(DatabaseError):
    """The database cannot be used as configured: authentication refused, no such database, a
    missing table or column (an older or newer Letta schema). Retrying cannot help: exit 2."""

    configuration = True


class Stopped(Exception):  # noqa: N818 - a signal, not an error
    """Shutdown was requested while a batch was still undelivered (nothing was lost: the
    checkpoint still points before it)."""

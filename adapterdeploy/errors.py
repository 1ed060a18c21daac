"""One exception hierarchy for every stage.

Each error carries an ``error_type`` (a short stable name used by the HTTP layer and ``--json`` output)
and an HTTP status. Messages give the value, the limit, and the setting or command that changes it.
Pure Python: imported by models, exporter, runtime and serving alike.
"""

from __future__ import annotations

__all__ = [
    "AdapterDeployError",
    "ArtifactError",
    "AuthenticationError",
    "ChecksumError",
    "ClientTimeoutError",
    "ConfigError",
    "DataError",
    "ExportError",
    "FingerprintMismatchError",
    "ForbiddenPathError",
    "InputError",
    "LockedError",
    "OverloadedError",
    "ParityError",
    "PayloadTooLargeError",
    "ProviderError",
    "RegistryFullError",
    "RequestTimeoutError",
    "SchemaVersionError",
    "TaskArtifactError",
    "TaskFailedError",
    "UnavailableError",
    "UnknownTaskError",
    "UnsupportedAdapterError",
    "UnsupportedArchitectureError",
]


class AdapterDeployError(Exception):
    """Base of every error this package raises on purpose."""

    error_type = "internal"
    http_status = 500

    def to_dict(self) -> dict[str, str]:
        return {"error": str(self), "error_type": self.error_type}


class ConfigError(AdapterDeployError, ValueError):
    """An option or configuration value is invalid."""

    error_type = "invalid_config"
    http_status = 400


class UnsupportedArchitectureError(ConfigError):
    """The base model is not a supported BERT-family encoder."""

    error_type = "unsupported_architecture"


class UnsupportedAdapterError(ConfigError):
    """An adapter method or option we cannot represent (LoRA, prefix tuning, fusion, ...)."""

    error_type = "unsupported_adapter"


class DataError(AdapterDeployError, ValueError):
    """A dataset file is missing, empty or malformed; the message names file and line."""

    error_type = "invalid_data"
    http_status = 400


class InputError(AdapterDeployError, ValueError):
    """A prediction input is invalid (empty text, wrong type, too long with strict=True, ...)."""

    error_type = "invalid_input"
    http_status = 400


class UnknownTaskError(AdapterDeployError, KeyError):
    """A task name that the deployment does not know."""

    error_type = "unknown_task"
    http_status = 404

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else "unknown task"


class RegistryFullError(AdapterDeployError, RuntimeError):
    """The memory budget is full and every loaded task is pinned."""

    error_type = "registry_full"
    http_status = 503


class ArtifactError(AdapterDeployError, OSError):
    """A deployment or checkpoint on disk is missing, unreadable or inconsistent."""

    error_type = "invalid_artifact"
    http_status = 500


class ChecksumError(ArtifactError):
    """A file's sha256 or size differs from the manifest (corrupt or truncated)."""

    error_type = "checksum_mismatch"


class SchemaVersionError(ArtifactError):
    """A manifest written by a newer (or unknown) schema version."""

    error_type = "schema_version"


class TaskFailedError(AdapterDeployError, RuntimeError):
    """A task whose weights, files or head failed (load or run); it stays out of service until reloaded.

    Only that task's rows get this error; other tasks in the same batch are answered normally.
    """

    error_type = "task_failed"
    http_status = 503


class FingerprintMismatchError(ArtifactError):
    """A task was exported for another base model or featurizer."""

    error_type = "fingerprint_mismatch"
    http_status = 409


class ExportError(AdapterDeployError, RuntimeError):
    """The exporter could not produce a valid deployment."""

    error_type = "export_failed"


class ParityError(ExportError):
    """ONNX outputs differ from PyTorch beyond the tolerance; lists every failing output."""

    error_type = "parity_failed"

    def __init__(self, message: str, failures: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.failures = dict(failures or {})


class ProviderError(AdapterDeployError, RuntimeError):
    """A requested onnxruntime execution provider is not available here."""

    error_type = "provider_unavailable"
    http_status = 500


# --- serving (HTTP) errors: raised by adapterdeploy.serving, mapped to their status by the HTTP layer ---


class PayloadTooLargeError(InputError):
    """A request body or row count over the server's limit (refused before tokenization)."""

    error_type = "payload_too_large"
    http_status = 413


class ClientTimeoutError(InputError):
    """The client sent its request body too slowly (slow-client protection)."""

    error_type = "client_timeout"
    http_status = 408


class AuthenticationError(AdapterDeployError, PermissionError):
    """A missing or wrong admin bearer token."""

    error_type = "unauthorized"
    http_status = 401


class OverloadedError(AdapterDeployError, RuntimeError):
    """The request queue is full; the client should retry after ``retry_after_s`` seconds."""

    error_type = "overloaded"
    http_status = 429

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))


class UnavailableError(AdapterDeployError, RuntimeError):
    """The server is not ready or is shutting down; retry on another replica."""

    error_type = "unavailable"
    http_status = 503


class RequestTimeoutError(UnavailableError):
    """A request waited longer than the server's per-request timeout (queue + inference)."""

    error_type = "timeout"


class LockedError(ArtifactError):
    """Another writer (export --force, add-task, remove-task) holds the deployment's lock."""

    error_type = "locked"
    http_status = 409


class TaskArtifactError(InputError):
    """A task directory given to the admin API is bad (metadata, checksums, weights): the client's to fix."""

    error_type = "invalid_task_artifact"
    http_status = 422


class ForbiddenPathError(InputError):
    """A path outside the directories the operator allowed (``serve --task-root``)."""

    error_type = "forbidden_path"
    http_status = 403

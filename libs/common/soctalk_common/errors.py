"""Error classification shared by every service and gateway.

Handlers and gateways raise one of two families; the consumer runtime maps them to broker actions:

* ``PermanentError`` — retrying cannot help (bad input, forbidden, not found where it must exist).
  The message is terminated and copied to the DLQ with the reason.
* ``TemporaryError`` — the world may fix itself (timeouts, 5xx, connection refused, lease held).
  The message is nak'ed with ``delay`` seconds and retried up to MaxDeliver.

Messages never contain secret material: callers pass object names and causes, never values.
"""

from __future__ import annotations


class SocTalkError(Exception):
    """Base class for every error this project raises on purpose."""


class PermanentError(SocTalkError):
    """Retrying will not help."""


class TemporaryError(SocTalkError):
    """Retrying later may help; ``delay`` is the suggested back-off in seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class ValidationFailed(PermanentError):
    """Input failed validation. ``errors`` lists ``(json_path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in errors) or "invalid input")


# --- gateway errors: each names the object and the cause ---------------------------------------


class GatewayError(SocTalkError):
    """An external system (Kubernetes, Helm, Vault) refused or failed."""


class NotFound(GatewayError, PermanentError):
    pass


class Conflict(GatewayError, TemporaryError):
    pass


class Forbidden(GatewayError, PermanentError):
    pass


class Unauthorized(GatewayError, PermanentError):
    pass


class Unavailable(GatewayError, TemporaryError):
    """Unreachable server, 5xx, timeout."""


class InvalidObject(GatewayError, PermanentError):
    """The server rejected the object as invalid (422 / schema / render error)."""


class OperationInProgress(GatewayError, TemporaryError):
    """Another operation holds the resource (Helm pending-*, tenant lease)."""

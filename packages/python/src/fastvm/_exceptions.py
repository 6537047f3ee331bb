"""Exceptions raised by the SDK.

Every exception derives from :class:`FastVMError`. Timeouts also derive from the built-in
:class:`TimeoutError`, so ``except TimeoutError`` catches all of them::

    FastVMError
    ├── APIConnectionError           the server could not be reached, or the connection broke
    │   └── APITimeoutError          a call ran out of time (also a TimeoutError)
    ├── APIError                     the server answered with an error status
    │   ├── BadRequestError          400
    │   ├── AuthenticationError      401
    │   ├── PermissionDeniedError    403
    │   ├── NotFoundError            404
    │   ├── ConflictError            409
    │   ├── UnprocessableEntityError 422
    │   ├── RateLimitError           429
    │   │   └── QuotaExceededError   429 with code "quota_exceeded" and the exhausted `dimension`
    │   └── InternalServerError      5xx
    ├── VMLaunchError                a launched or restored VM ended in error/stopped/deleting
    ├── VMNotReadyError              ... or was not running within the timeout (also a TimeoutError)
    ├── SnapshotError                a snapshot ended in error
    └── SnapshotNotReadyError        ... or was not ready within the timeout (also a TimeoutError)
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FastVMError",
    "APIConnectionError",
    "APITimeoutError",
    "APIError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "UnprocessableEntityError",
    "RateLimitError",
    "QuotaExceededError",
    "InternalServerError",
    "VMLaunchError",
    "VMNotReadyError",
    "SnapshotError",
    "SnapshotNotReadyError",
]


class FastVMError(Exception):
    """Base class of every error the SDK raises (also used for invalid arguments and setup)."""


class APIConnectionError(FastVMError):
    """The request could not be completed at the transport level.

    ``request_sent`` tells whether the server may have received the request: when it is false
    (connection refused, TLS failure, a request the server refused before processing it) the
    request certainly had no effect.
    """

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.request_sent = request_sent


class APITimeoutError(APIConnectionError, builtins.TimeoutError):
    """A call did not complete within its timeout. The request was cancelled on the wire."""


class APIError(FastVMError):
    """The server answered with an error status.

    Attributes:
        status: HTTP status code.
        code: the server's stable error code (``"not_found"``, ``"quota_exceeded"``, ...), or
            ``None`` when the body has none.
        message: the server's human-readable message.
        body: the parsed JSON body (or the raw text when it is not JSON).
        headers: response headers (lower-case names).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" if code else f"{status}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def status_code(self) -> int:
        """Alias of :attr:`status`."""
        return self.status


class BadRequestError(APIError):
    """400: the request was malformed or a field failed validation (see ``field``)."""

    @property
    def field(self) -> str | None:
        """The offending field, as the server names it (e.g. ``firewall.ingress[0].portStart``)."""
        value = self.body.get("field") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else None


class AuthenticationError(APIError):
    """401: missing, unknown or revoked API key."""


class PermissionDeniedError(APIError):
    """403: the key may not do this."""


class NotFoundError(APIError):
    """404: no such VM or snapshot in your organization (ids and names alike)."""


class ConflictError(APIError):
    """409: the object is not in a state that allows this, or a name matches several objects."""


class UnprocessableEntityError(APIError):
    """422: the request was understood but cannot be processed."""


class RateLimitError(APIError):
    """429: too many requests."""


class QuotaExceededError(RateLimitError):
    """429 ``quota_exceeded``: an organization quota would be exceeded.

    ``dimension`` names it: ``"vcpu"``, ``"memory_mib"``, ``"disk_gib"`` or ``"snapshot_count"``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, code=code, body=body, headers=headers)
        value = body.get("dimension") if isinstance(body, dict) else None
        self.dimension: str | None = value if isinstance(value, str) else None


class InternalServerError(APIError):
    """5xx: the server or the VM failed while serving the request."""


class VMLaunchError(FastVMError):
    """A VM being launched or restored reached a state it will not leave (error, stopped, ...)."""

    def __init__(self, vm_id: str, status: str) -> None:
        super().__init__(f"VM {vm_id} ended in status '{status}' instead of 'running'")
        self.vm_id = vm_id
        self.status = status


class VMNotReadyError(FastVMError, builtins.TimeoutError):
    """A VM being launched or restored was not running within the timeout."""

    def __init__(self, vm_id: str, status: str, timeout: float) -> None:
        super().__init__(f"VM {vm_id} was not running after {timeout:g} s (last status '{status}')")
        self.vm_id = vm_id
        self.status = status
        self.timeout = timeout


class SnapshotError(FastVMError):
    """A snapshot reached a state it will not leave (error, deleted) instead of ready."""

    def __init__(self, snapshot_id: str, status: str) -> None:
        super().__init__(f"snapshot {snapshot_id} ended in status '{status}' instead of 'ready'")
        self.snapshot_id = snapshot_id
        self.status = status


class SnapshotNotReadyError(FastVMError, builtins.TimeoutError):
    """A snapshot was not ready within the timeout."""

    def __init__(self, snapshot_id: str, status: str, timeout: float) -> None:
        super().__init__(
            f"snapshot {snapshot_id} was not ready after {timeout:g} s (last status '{status}')"
        )
        self.snapshot_id = snapshot_id
        self.status = status
        self.timeout = timeout


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_from_response(status: int, body: Any, headers: Mapping[str, str]) -> APIError:
    """The typed exception for an error response (body already parsed)."""
    code: str | None = None
    message = ""
    if isinstance(body, dict):
        raw_code = body.get("code")
        code = raw_code if isinstance(raw_code, str) else None
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                message = value
                break
    elif isinstance(body, str):
        message = body[:2000]
    if not message:
        message = f"HTTP {status}"
    cls: type[APIError]
    if code == "quota_exceeded":
        cls = QuotaExceededError
    elif status >= 500:
        cls = InternalServerError
    else:
        cls = _BY_STATUS.get(status, APIError)
    return cls(status, message, code=code, body=body, headers=headers)

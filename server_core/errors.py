"""Errors that services raise for the API and the UI to show as they are."""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal with a stable code and a message meant for the operator."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class InvalidInput(ServiceError):
    status = 400
    code = "invalid"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class HostOffline(Conflict):
    """The host's agent is not connected (or went away before answering)."""

    code = "offline"


class Busy(ServiceError):
    status = 503
    code = "busy"


class AgentTimeout(ServiceError):
    status = 504
    code = "timeout"


class AgentFailed(ServiceError):
    """The agent refused or failed a call; ``code`` is the agent's own code."""

    status = 502

    def __init__(self, message: str, *, code: str = "failed", field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code

"""Typed domain errors of the search core. Mapped to gRPC status codes in one place
(``server.interceptors.STATUS_BY_ERROR``); the core itself knows nothing of gRPC."""

from __future__ import annotations


class SearchError(Exception):
    """Base class: a request the core refuses, with a message for the client and, when one request
    field is to blame, its name (``options.k``, ``vector``...; reported as a BadRequest field violation)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class InvalidArgument(SearchError):
    """The request is malformed or out of range (says expected vs got)."""


class NotFound(SearchError):
    """An item id is not in the serving bundle."""


class ResourceExhausted(SearchError):
    """The request exceeds a size limit (image bytes or pixels)."""


class FailedPrecondition(SearchError):
    """The serving bundle cannot answer this kind of query."""


class Unavailable(SearchError):
    """No bundle is loaded yet."""


class Unauthenticated(SearchError):
    """Missing or wrong credentials."""


class Cancelled(SearchError):
    """The client cancelled the call; the work for it was stopped."""


class DeadlineExceeded(SearchError):
    """The call's deadline passed; the work for it was stopped."""

"""Errors answered to clients: a status, a bounded reason label and a readable message."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from inferwatch.metrics.names import FEEDBACK_STATUS_BY_REASON, STATUS_BY_REASON

_STATUS_BY_REASON = {**STATUS_BY_REASON, **FEEDBACK_STATUS_BY_REASON}


class InferenceError(Exception):
    def __init__(self, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = _STATUS_BY_REASON[reason]
        self.headers = headers or {}


def error_response(reason: str, message: str, status: int,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": status, "error": reason, "message": message}, status,
                        headers=headers)

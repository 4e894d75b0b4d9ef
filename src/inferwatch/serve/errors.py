"""Errors answered to clients: a status, a bounded reason label and a readable message."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

_STATUS_BY_REASON = {
    "empty_body": 400, "invalid_json": 400, "invalid_image": 400, "bad_request": 400,
    "unknown_output": 400,
    "invalid_shape": 422, "unknown_model": 404, "not_found": 404, "method_not_allowed": 405,
    "body_too_large": 413, "image_too_large": 413, "unsupported_media_type": 415,
    "overloaded": 503,
    "timeout": 504, "internal": 500, "injected": 500,
    "unknown_request_id": 404, "duplicate_feedback": 409, "invalid_label": 422,
    # nginx's code for a client that went away before the answer: there is nobody to send it
    # to, but it is counted, as a client error.
    "client_closed": 499,
}


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

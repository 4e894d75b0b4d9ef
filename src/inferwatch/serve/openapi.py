"""The OpenAPI 3.0 document of ``inferwatch serve``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import inferwatch
from inferwatch.serve.protocols import MAX_ID_CHARS

_ERROR = {
    "description": "Error with a bounded reason",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_OIP_ERROR = {
    "description": "Open Inference Protocol error: the message in error, the bounded reason "
                   "beside",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OIPError"}}},
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _ERROR for code in codes}


def _oip_errors(*codes: int) -> dict[str, Any]:
    return {str(code): _OIP_ERROR for code in codes}


def openapi_document(models: Mapping[str, str]) -> dict[str, Any]:
    """The document for the served ``models`` (name -> version)."""
    model_param = {"name": "model", "in": "path", "required": True,
                   "schema": {"type": "string", "enum": list(models)}}
    version_param = {"name": "version", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": sorted(set(models.values()))}}
    request_id = {"name": "X-Request-ID", "in": "header", "required": False,
                  "description": "Kept as the answer's id when it matches ^[A-Za-z0-9._-]{1,64}$",
                  "schema": {"type": "string"}}
    inference_errors = _errors(400, 404, 413, 422, 503)
    infer_headers = [
        {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
         "description": "Binary tensor data extension: the body is this many bytes of JSON, "
                        "then the input's bytes (its parameters.binary_data_size)",
         "schema": {"type": "integer", "minimum": 1}},
        {"name": "Content-Encoding", "in": "header", "required": False,
         "description": "A compressed body, at most as large as the body limit once "
                        "decompressed",
         "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]}},
    ]
    infer = {
        "summary": "Open Inference Protocol v2 inference",
        "description": "An id is echoed; unless it matches ^[A-Za-z0-9._-]{1,64}$ the answer "
                       "is kept for feedback under an id the service draws, sent as "
                       "X-Request-ID. With Inference-Header-Content-Length the answer holds "
                       "the outputs asked for as binary data after its JSON header.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/InferRequest"}}}},
        "responses": {"200": {"description": "OK", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                      **_oip_errors(400, 404, 413, 415, 422, 503)},
    }
    model_ready = {"summary": "Model readiness", "responses": {
        "200": _json({"type": "object", "required": ["name", "ready"]}), **_oip_errors(404)}}
    model_metadata = {"summary": "Model metadata",
                      "responses": {"200": _json({"type": "object"}), **_oip_errors(404)}}
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "inferwatch serve", "version": inferwatch.__version__},
        "paths": {
            "/predictions/{model}": {"post": {
                "summary": "Classify one image (TorchServe-compatible)",
                "parameters": [model_param, request_id],
                "requestBody": {"required": True, "content": {
                    "image/png": binary,
                    "image/jpeg": binary,
                    "application/octet-stream": binary,
                    "application/json": {"schema": {
                        "type": "object", "required": ["image_base64"],
                        "properties": {"image_base64": {"type": "string",
                                                        "format": "byte"}}}},
                }},
                "responses": {"200": _json({"type": "object", "additionalProperties": {
                    "type": "number"}}, "Top-5 labels with probabilities"), **inference_errors},
            }},
            "/v2/models/{model}/infer": {"post": {
                **infer, "parameters": [model_param, *infer_headers]}},
            "/v2/models/{model}/versions/{version}/infer": {"post": {
                **infer, "parameters": [model_param, version_param, *infer_headers]}},
            "/v2/models/{model}": {"get": {**model_metadata, "parameters": [model_param]}},
            "/v2/models/{model}/versions/{version}": {"get": {
                **model_metadata, "parameters": [model_param, version_param]}},
            "/v2/models/{model}/ready": {"get": {**model_ready, "parameters": [model_param]}},
            "/v2/models/{model}/versions/{version}/ready": {"get": {
                **model_ready, "parameters": [model_param, version_param]}},
            "/v2": {"get": {"summary": "Server metadata", "responses": {"200": _json({
                "type": "object", "required": ["name", "version", "extensions"]})}}},
            "/feedback": {"post": {
                "summary": "The true label of an earlier answer, by its request id",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Feedback"}}}},
                "responses": {"200": _json({"type": "object", "required": [
                    "request_id", "model", "correct", "top5_correct"]}),
                              **_errors(400, 404, 409, 413, 422)},
            }},
            "/v2/health/ready": {"get": {"summary": "Readiness",
                                         "responses": {"200": _json({"type": "object"})}}},
            "/v2/health/live": {"get": {"summary": "Liveness",
                                        "responses": {"200": _json({"type": "object"})}}},
            "/models": {"get": {"summary": "Served models",
                                "responses": {"200": _json({"type": "object"})}}},
            "/ping": {"get": {"summary": "Health (TorchServe-compatible)",
                              "responses": {"200": _json({"type": "object"})}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": _json({"type": "object"})}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["code", "error", "message"],
                      "properties": {"code": {"type": "integer"}, "error": {"type": "string"},
                                     "message": {"type": "string"}}},
            "OIPError": {"type": "object", "required": ["code", "error", "reason"],
                         "properties": {"code": {"type": "integer"},
                                        "error": {"type": "string"},
                                        "reason": {"type": "string"}}},
            "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string", "maxLength": MAX_ID_CHARS},
                "parameters": {"type": "object", "properties": {
                    "binary_data_output": {"type": "boolean"}}},
                "outputs": {"type": "array", "items": {
                    "type": "object", "required": ["name"], "properties": {
                        "name": {"type": "string", "enum": ["probabilities", "label"]},
                        "parameters": {"type": "object", "properties": {
                            "binary_data": {"type": "boolean"}}}}}},
                "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                    "type": "object", "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "minItems": 1, "maxItems": 32,
                                  "items": {"type": "integer", "minimum": 1},
                                  "description": "[n, *input shape] or [n, input size]; "
                                                 "digits: [n, 8, 8] or [n, 64]"},
                        "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT32",
                                                                "INT64", "UINT8"]},
                        "data": {"type": "array", "items": {"type": "number"},
                                 "description": "Row-major values, as many as shape holds; "
                                                "or none, and parameters.binary_data_size"},
                    }}},
            }},
            "InferResponse": {"type": "object",
                              "required": ["model_name", "model_version", "id", "outputs"],
                              "properties": {"outputs": {"type": "array", "items": {
                                  "type": "object", "required": ["name", "datatype", "shape"],
                                  "description": "data, or parameters.binary_data_size"}}}},
            "Feedback": {"type": "object", "required": ["request_id", "label"], "properties": {
                "request_id": {"type": "string", "description": "X-Request-ID or id answered"},
                "label": {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}],
                          "description": "A label of the model, or its index"},
            }},
        }},
    }

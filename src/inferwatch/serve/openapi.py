"""The OpenAPI 3.0 document of ``inferwatch serve``."""

from __future__ import annotations

from typing import Any

import inferwatch

_ERROR = {
    "description": "Error with a bounded reason",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(models: list[str]) -> dict[str, Any]:
    model_param = {"name": "model", "in": "path", "required": True,
                   "schema": {"type": "string", "enum": models}}
    errors = {str(code): _ERROR for code in (400, 404, 413, 415, 422, 503)}
    return {
        "openapi": "3.0.3",
        "info": {"title": "inferwatch serve", "version": inferwatch.__version__},
        "paths": {
            "/predictions/{model}": {"post": {
                "summary": "Classify one image (TorchServe-compatible)",
                "parameters": [model_param],
                "requestBody": {"required": True, "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}},
                    "application/json": {"schema": {
                        "type": "object", "required": ["image_base64"],
                        "properties": {"image_base64": {"type": "string",
                                                        "format": "byte"}}}},
                }},
                "responses": {"200": _json({"type": "object", "additionalProperties": {
                    "type": "number"}}, "Top-5 labels with probabilities"), **errors},
            }},
            "/v2/models/{model}/infer": {"post": {
                "summary": "Open Inference Protocol v2 inference",
                "parameters": [model_param],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/InferRequest"}}}},
                "responses": {"200": _json({"type": "object"}), **errors},
            }},
            "/v2/models/{model}": {"get": {
                "summary": "Model metadata", "parameters": [model_param],
                "responses": {"200": _json({"type": "object"}), "404": _ERROR},
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
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["code", "error", "message"],
                      "properties": {"code": {"type": "integer"}, "error": {"type": "string"},
                                     "message": {"type": "string"}}},
            "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string"},
                "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                    "type": "object", "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT32",
                                                                "INT64", "UINT8"]},
                        "data": {"type": "array", "items": {"type": "number"}},
                    }}},
            }},
        }},
    }

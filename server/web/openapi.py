"""The OpenAPI 3 description of every HTTP route, served at ``GET /openapi.json``.

Kept by hand beside the handlers it describes; the test suite runs schemathesis against the
running app with this document, so a route or answer that drifts from it fails the tests.
"""

from __future__ import annotations

from typing import Any

from server.names import REPOSITORY_NAME

JSON = "application/json"
_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ERROR_REF, description)


def _binary(media_types: list[str], description: str, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}} for media in media_types
        },
    }
    if headers:
        answer["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return answer


_REPO_PARAMETER = {
    "name": "repo",
    "in": "path",
    "required": True,
    "description": f"repository name, {REPOSITORY_NAME.pattern}",
    "schema": {"type": "string"},
}
_IMAGES = ["image/jpeg", "image/png", "image/webp"]
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}, {}]

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "RepositorySummary": {
        "type": "object",
        "required": ["count", "progress", "status"],
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "status": {"enum": ["available", "preparing", "failed"]},
            "error": {"type": "string"},
        },
    },
    "Repository": {
        "allOf": [
            {"$ref": "#/components/schemas/RepositorySummary"},
            {
                "type": "object",
                "required": ["images"],
                "properties": {"images": {"type": "array", "items": {"type": "string"}}},
            },
        ]
    },
    "ProcessorResults": {
        "type": "object",
        "description": "the answer of each analysis API, or {error, status} for one that failed",
        "additionalProperties": True,
    },
    "Video": {
        "type": "object",
        "required": ["duration", "frames", "width", "height", "codec", "bytes"],
        "properties": {
            "duration": {"type": "number"},
            "frames": {"type": "integer"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "codec": {"type": "string"},
            "bytes": {"type": "integer"},
        },
    },
    "Job": {
        "type": "object",
        "required": ["job", "status"],
        "properties": {
            "job": {"type": "string"},
            "status": {"enum": ["queued", "running", "done", "failed"]},
            "position": {"type": ["integer", "null"]},
            "result": {"$ref": "#/components/schemas/ProcessorResults"},
            "video": {"$ref": "#/components/schemas/Video"},
            "error": {"type": ["string", "null"]},
        },
        "additionalProperties": True,
    },
    "ClipSummary": {
        "type": "object",
        "required": ["frames", "duration", "width", "height", "codec"],
        "properties": {
            "frames": {"type": "integer"},
            "duration": {"type": "number"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "codec": {"type": "string"},
        },
    },
    "MotionReport": {
        "type": "object",
        "required": ["frames", "energy", "threshold", "ranges"],
        "properties": {
            "frames": {"type": "integer"},
            "energy": {"type": "array", "items": {"type": "number"}},
            "threshold": {"type": "number"},
            "ranges": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
            },
        },
    },
}

_CLIP_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "video/mp4": {"schema": {"type": "string", "format": "binary"}},
    },
}


_PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "summary": "All repositories",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "additionalProperties": {"$ref": "#/components/schemas/RepositorySummary"},
                    },
                    "count, progress and status of each repository",
                )
            },
        }
    },
    "/{repo}": {
        "get": {
            "summary": "One repository (starts its download when unknown and a source is set)",
            "parameters": [_REPO_PARAMETER],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/Repository"}, "the repository"),
                "400": _error("invalid repository name"),
                "404": _error("no such repository and no source to download it from"),
            },
        }
    },
    "/{repo}/video.jpg": {
        "get": {
            "summary": "The next frame for this client (cursor in an encrypted cookie)",
            "parameters": [_REPO_PARAMETER],
            "responses": {
                "200": _binary(
                    _IMAGES,
                    "the frame, or a placeholder JPEG while the repository is not available",
                    **{"X-Placeholder": "true when the image is the placeholder"},
                ),
                "400": _error("invalid repository name"),
            },
        }
    },
    "/{repo}/video.mjpg": {
        "get": {
            "summary": "The repository as an endless MJPEG stream",
            "parameters": [
                _REPO_PARAMETER,
                {
                    "name": "fps",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "exclusiveMinimum": 0},
                },
            ],
            "responses": {
                "200": _binary(["multipart/x-mixed-replace"], "frames, one part each"),
                "400": _error("invalid repository name or fps"),
                "404": _error("no such repository and no source"),
            },
        }
    },
    "/{repo}/frames/{index}": {
        "get": {
            "summary": "One frame by index, from 0",
            "parameters": [
                _REPO_PARAMETER,
                {"name": "index", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _binary(_IMAGES, "the frame (a placeholder while not available)"),
                "400": _error("invalid repository name or index"),
                "404": _error("no such repository or frame"),
            },
        }
    },
    "/get_session_id": {
        "get": {
            "summary": "A session id for one Socket.IO connection",
            "security": _BEARER,
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["session_id"],
                        "properties": {"session_id": {"type": "string"}},
                    },
                    "a new id, valid for [sessions] ttl seconds",
                ),
                "401": _error("missing or wrong API token"),
                "503": _error("too many unused session ids"),
            },
        }
    },
    "/options": {
        "get": {
            "summary": "The analysis APIs (processors)",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["processes", "processors"],
                        "properties": {
                            "processes": {"type": "array", "items": {"type": "string"}},
                            "processors": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                    "processor names and public details",
                )
            },
        }
    },
    "/analyze/{kind}": {
        "post": {
            "summary": "Built-in analysis of one clip: summary (frames, duration, size, codec) "
            "or motion (per-frame motion energy)",
            "parameters": [
                {
                    "name": "kind",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": ["summary", "motion"]},
                }
            ],
            "requestBody": _CLIP_BODY,
            "responses": {
                "200": _json(
                    {
                        "oneOf": [
                            {"$ref": "#/components/schemas/ClipSummary"},
                            {"$ref": "#/components/schemas/MotionReport"},
                        ]
                    },
                    "what was found",
                ),
                "400": _error("no file in the body"),
                "404": _error("no such analysis: kind is summary or motion"),
                "413": _error("clip over [clips] max_clip_bytes"),
                "422": _error("not a video that can be decoded"),
            },
        }
    },
    "/batch": {
        "post": {
            "summary": "Analyse a whole video with the processors",
            "security": _BEARER,
            "parameters": [
                {
                    "name": "processes",
                    "in": "query",
                    "required": False,
                    "description": "comma-separated processor names (default: all)",
                    "schema": {"type": "string"},
                },
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "false: answer 202 with a job id at once",
                    "schema": {"type": "string", "enum": ["true", "false"]},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    **_CLIP_BODY["content"],
                    "video/*": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["result", "video"],
                        "properties": {
                            "job": {"type": "string"},
                            "result": {"$ref": "#/components/schemas/ProcessorResults"},
                            "video": {"$ref": "#/components/schemas/Video"},
                        },
                    },
                    "every processor's answer",
                ),
                "202": _json({"$ref": "#/components/schemas/Job"}, "queued (wait=false)"),
                "400": _error("unknown processor or bad parameter"),
                "401": _error("missing or wrong API token"),
                "413": _error("body over [batch] max_bytes"),
                "415": _error("neither multipart with a file nor a video/* body"),
                "422": _error("not a video, or over the duration or pixel limits"),
                "503": _error("too many queued jobs, or shutting down"),
                "507": _error("disk full"),
            },
        }
    },
    "/batch/{job}": {
        "get": {
            "summary": "Status and result of a batch job",
            "security": _BEARER,
            "parameters": [
                {"name": "job", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/Job"}, "the job"),
                "401": _error("missing or wrong API token"),
                "404": _error("no such job (or it expired)"),
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness",
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"status": {"const": "alive"}}}, "alive"
                )
            },
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: listening, store loaded, not shutting down",
            "responses": {
                "200": _json({"$ref": "#/components/schemas/Readiness"}, "ready"),
                "503": _json({"$ref": "#/components/schemas/Readiness"}, "not ready"),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
        }
    },
}

_SCHEMAS["Readiness"] = {
    "type": "object",
    "required": ["ready", "listening", "shutting_down"],
    "properties": {
        "ready": {"type": "boolean"},
        "listening": {"type": "boolean"},
        "shutting_down": {"type": "boolean"},
    },
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of framehub's HTTP API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "framehub",
            "version": "0.1.0",
            "description": "Camera frames: virtual cameras, live ingest (Socket.IO at "
            "/socket.io/), batch analysis. Errors are JSON {error}.",
        },
        "paths": _PATHS,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }

"""The OpenAPI 3.1 document served at ``/api/v1/openapi.json``.

A test compares its paths and methods with the app's URL map, so the two
cannot drift apart silently.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

bp = Blueprint("openapi", __name__)

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JOB = {"description": "the job", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_KIND = {"enum": ["auto", "cells", "fields"], "default": "auto",
         "description": "cells: one cell per image; fields: whole field/slide images (cells are found, then classified); "
                        "auto: fields when the images are microscope-field sized"}
_PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
]

SPEC: dict = {
    "openapi": "3.1.0",
    "info": {"title": "HematoVision API", "version": "1.0.0",
             "description": "Submit folders of blood-cell images, poll jobs, download white-cell differential reports."},
    "paths": {
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness: database and broker reachable", "security": [],
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI"}}}},
        "/api/v1/jobs": {
            "post": {
                "summary": "Submit a job: multipart files (relative paths kept), one .zip, or a server-side folder",
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "name": {"type": "string"}, "batch_size": {"type": "integer"}, "kind": _KIND}}},
                    "application/json": {"schema": {"type": "object", "required": ["folder"], "properties": {
                        "folder": {"type": "string"}, "name": {"type": "string"}, "batch_size": {"type": "integer"}, "kind": _KIND}}},
                }},
                "responses": {"202": {**_JOB, "headers": {"Location": {"schema": {"type": "string"}}}},
                              "400": _ERROR, "403": _ERROR, "413": _ERROR, "422": _ERROR, "503": _ERROR},
            },
            "get": {"summary": "List jobs, newest first", "parameters": _PAGE,
                    "responses": {"200": {"description": "a page of jobs"}, "400": _ERROR}},
        },
        "/api/v1/jobs/{job_id}": {"get": {"summary": "Job status and progress", "parameters": [_JOB_ID],
                                          "responses": {"200": _JOB, "404": _ERROR}}},
        "/api/v1/jobs/{job_id}/results": {"get": {
            "summary": "Per-image predictions, paged", "parameters": [_JOB_ID, *_PAGE],
            "responses": {"200": {"description": "a page of results"}, "404": _ERROR}}},
        "/api/v1/jobs/{job_id}/report": {"get": {
            "summary": "Differential-count report (JSON or CSV)",
            "description": "Counts use each cell's newest review, else the model's label; the JSON adds review counts, "
                           "the sign-off, reference intervals with flags and warnings. PDF: one page to file.",
            "parameters": [_JOB_ID, {"name": "format", "in": "query", "schema": {"enum": ["json", "csv", "pdf"]}}],
            "responses": {"200": {"description": "the report", "content": {"application/json": {}, "text/csv": {}, "application/pdf": {}}},
                          "404": _ERROR, "409": _ERROR}}},
        "/api/v1/jobs/{job_id}/images/{seq}/cells/{idx}/thumbnail.jpg": {"get": {
            "summary": "Crop thumbnail of a white cell found in a field image",
            "parameters": [_JOB_ID, {"name": "seq", "in": "path", "required": True, "schema": {"type": "integer"}},
                           {"name": "idx", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "JPEG", "content": {"image/jpeg": {}}}, "404": _ERROR}}},
        "/api/v1/jobs/{job_id}/enqueue": {"post": {
            "summary": "Re-send the batches of a queued or running job that no live worker holds (idempotent; after a 503)",
            "parameters": [_JOB_ID], "responses": {"202": _JOB, "404": _ERROR, "409": _ERROR, "503": _ERROR}}},
        "/api/v1/jobs/{job_id}/reviews": {
            "get": {"summary": "Every review of the job's cells, oldest first, and the sign-off", "parameters": [_JOB_ID],
                    "responses": {"200": {"description": "reviews"}, "404": _ERROR}},
            "post": {"summary": "Reclassify one cell (a new review row; the model's prediction is kept)", "parameters": [_JOB_ID],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["seq", "label", "reviewer"], "properties": {
                             "seq": {"type": "integer", "description": "image number in the job"},
                             "cell": {"type": ["integer", "null"], "description": "cell index in a field image (fields jobs)"},
                             "label": {"type": "string"}, "reviewer": {"type": "string"}}}}}},
                     "responses": {"201": {"description": "the review"}, "400": _ERROR, "404": _ERROR,
                                   "409": {**_ERROR, "description": "job not succeeded, or signed off"}}},
        },
        "/api/v1/jobs/{job_id}/signoff": {"post": {
            "summary": "Sign off the job's report: locks it against further reviews", "parameters": [_JOB_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["reviewer"], "properties": {"reviewer": {"type": "string"}}}}}},
            "responses": {"201": {"description": "the sign-off"}, "400": _ERROR, "404": _ERROR,
                          "409": {**_ERROR, "description": "already signed off, or job not succeeded"}}}},
        "/api/v1/jobs/{job_id}/cancel": {"post": {"summary": "Cancel a queued or running job", "parameters": [_JOB_ID],
                                                  "responses": {"200": _JOB, "404": _ERROR, "409": _ERROR}}},
    },
    "security": [{"bearer": []}],
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                  "description": "required when the server has tokens (HEMATOVISION_API_TOKEN(S)); "
                                                                 "a token sees only its own jobs, an admin token all"}},
                   "schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        "Job": {"type": "object", "required": ["id", "status", "images"], "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["queued", "running", "succeeded", "failed", "canceled"]},
            "images": {"type": "object", "properties": {k: {"type": "integer"} for k in ("total", "done", "failed", "pending")}},
            "owner": {"type": ["string", "null"], "description": "name of the token that submitted the job"},
            "error": {"type": ["string", "null"]},
            "error_code": {"type": ["string", "null"], "description": "why it failed: nothing_usable, internal, ..."},
            "model": {"type": "object"}, "timings": {"type": "object"}, "links": {"type": "object"}}},
    }},
}


@bp.get("/api/v1/openapi.json")
def openapi():
    return jsonify(SPEC)

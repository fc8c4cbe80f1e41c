"""The OpenAPI 3.1 document, generated from the msgspec schemas (built once)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec

from shared.schemas import EnqueueAccepted, EnqueueRequest, Envelope, OrderOut, Problem, Receipt

_REF = "#/components/schemas/{name}"
_CRED_HEADERS = [
    {"name": "CG-Access-Key", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "Access key (for POST it may be sent in the body as access_key instead)."},
    {"name": "CG-Entity-ID", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "Entity id (for POST it may be sent in the body as entity_id instead)."},
]


def _answer(description: str, data_ref: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": _REF.format(name="Envelope")}
    if data_ref:
        schema = {"allOf": [schema, {"properties": {"data": {"$ref": _REF.format(name=data_ref)}}}]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_FAILURES = {
    "400": _answer("Not JSON or broken JSON; data.byte_offset says where."),
    "401": _answer("Unknown entity or wrong access key."),
    "403": _answer("The key lacks the right, or may not send for this source."),
    "413": _answer("Body over the size limit (default 1 MiB)."),
    "422": _answer("Schema or rule violation; errors[] names every failing loc."),
    "429": _answer("Over the key's or address's rate; see Retry-After."),
    "503": _answer("The queue (Redis) is unavailable; nothing was accepted."),
}


@lru_cache(maxsize=1)
def openapi_document() -> bytes:
    """The whole document as JSON bytes."""
    _, components = msgspec.json.schema_components(
        [EnqueueRequest, Envelope, EnqueueAccepted, Receipt, OrderOut, Problem], ref_template=_REF)
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "orderflow Demand API",
            "version": "1",
            "description": "Clougistic-compatible order ingestion. Every answer is "
            '{"status": "success"|"failure", "data": ..., "errors": [...], "warnings": [...]}.',
        },
        "paths": {
            "/api/v1/order/enqueue": {"post": {
                "summary": "Enqueue an order (create or update by reference)",
                "description": "Validates the whole order and answers 202 once the payload is "
                "safely queued. Unknown fields are kept and named in warnings.",
                "parameters": [{**h, "required": False} for h in _CRED_HEADERS],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": _REF.format(name="EnqueueRequest")}}}},
                "responses": {"202": _answer("Accepted: a receipt to follow.", "EnqueueAccepted"),
                              **_FAILURES},
            }},
            "/api/v1/order/receipts/{receipt_id}": {"get": {
                "summary": "What happened to an enqueued payload",
                "parameters": [*_CRED_HEADERS, {"name": "receipt_id", "in": "path", "required": True,
                                                "schema": {"type": "string"}}],
                "responses": {"200": _answer("The receipt.", "Receipt"),
                              "401": _FAILURES["401"], "404": _answer("No such receipt.")},
            }},
            "/api/v1/order/{reference}": {"get": {
                "summary": "A stored order with its state and versions",
                "parameters": [*_CRED_HEADERS, {"name": "reference", "in": "path", "required": True,
                                                "schema": {"type": "string"}}],
                "responses": {"200": _answer("The order.", "OrderOut"),
                              "401": _FAILURES["401"], "404": _answer("No such order.")},
            }},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _answer("Alive.")}}},
            "/readyz": {"get": {"summary": "Readiness: Redis and PostgreSQL reachable",
                                "responses": {"200": _answer("Ready."), "503": _answer("Not ready.")}}},
        },
        "components": {"schemas": components},
    }
    return msgspec.json.encode(doc)

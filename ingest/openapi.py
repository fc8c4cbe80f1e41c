"""The OpenAPI 3.1 document, generated from the msgspec schemas (built once)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec

from shared.schemas import (
    EnqueueAccepted,
    EnqueueRequest,
    Envelope,
    OrderOut,
    PayloadIn,
    Problem,
    Receipt,
    ShipmentAccepted,
    ShipmentRequest,
)
from shared.webhooks import DeliveryOut, SubscriptionIn, SubscriptionOut, SubscriptionPatch

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


def _failures_except(*codes: str) -> dict[str, Any]:
    return {k: v for k, v in _FAILURES.items() if k not in codes}


@lru_cache(maxsize=1)
def openapi_document() -> bytes:
    """The whole document as JSON bytes."""
    _, components = msgspec.json.schema_components(
        [EnqueueRequest, Envelope, EnqueueAccepted, Receipt, OrderOut, Problem, PayloadIn,
         ShipmentRequest, ShipmentAccepted, SubscriptionIn, SubscriptionPatch, SubscriptionOut, DeliveryOut],
        ref_template=_REF)
    components["BatchRequest"] = {
        "type": "object", "required": ["orders"],
        "properties": {
            "access_key": {"type": "string"}, "entity_id": {"type": "string"},
            "orders": {"type": "array", "minItems": 1, "maxItems": 500, "description":
                       "Each entry is a payload, or {\"payload\": {...}} as in the single-order body.",
                       "items": {"$ref": _REF.format(name="PayloadIn")}}}}
    components["BatchResult"] = {
        "type": "object", "properties": {
            "accepted": {"type": "integer"}, "refused": {"type": "integer"},
            "results": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"}, "status": {"type": "integer", "enum": [202, 403, 422, 429]},
                "receipt": {"$ref": _REF.format(name="EnqueueAccepted")},
                "errors": {"type": "array", "items": {"$ref": _REF.format(name="Problem")}},
                "warnings": {"type": "array", "items": {"$ref": _REF.format(name="Problem")}}}}}}}
    admin = "Needs a key with the `admin` right."
    sub_id = {"name": "subscription_id", "in": "path", "required": True, "schema": {"type": "string"}}
    doc: dict[str, Any] = {
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
            "/api/v1/order/enqueue/batch": {"post": {
                "summary": "Enqueue up to 500 orders; one result per order, in request order",
                "parameters": [{**h, "required": False} for h in _CRED_HEADERS],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": _REF.format(name="BatchRequest")}}}},
                "responses": {"207": _answer("One result per order.", "BatchResult"),
                              **_failures_except("429")},
            }},
            "/api/v1/order/{reference}/shipments": {"post": {
                "summary": "Record a shipment of lines (flag_partial and COD enforced)",
                "parameters": [*_CRED_HEADERS, {"name": "reference", "in": "path", "required": True,
                                                "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": _REF.format(name="ShipmentRequest")}}}},
                "responses": {"201": _answer("Recorded.", "ShipmentAccepted"),
                              "200": _answer("This shipment_id was recorded before.", "ShipmentAccepted"),
                              "404": _answer("No such order."),
                              "422": _answer("The shipment breaks a rule (flag_partial, COD, quantities, state).")},
            }},
            "/api/v1/webhooks": {
                "post": {"summary": "Create a subscription; the whsec_ secret is shown once", "description": admin,
                         "parameters": _CRED_HEADERS,
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": _REF.format(name="SubscriptionIn")}}}},
                         "responses": {"201": _answer("Created.", "SubscriptionOut"),
                                       "422": _FAILURES["422"]}},
                "get": {"summary": "List subscriptions", "description": admin, "parameters": _CRED_HEADERS,
                        "responses": {"200": _answer("Subscriptions.")}},
            },
            "/api/v1/webhooks/{subscription_id}": {
                "get": {"summary": "One subscription", "parameters": [*_CRED_HEADERS, sub_id],
                        "responses": {"200": _answer("The subscription.", "SubscriptionOut")}},
                "patch": {"summary": "Update URL, filters or description", "parameters": [*_CRED_HEADERS, sub_id],
                          "requestBody": {"required": True, "content": {"application/json": {
                              "schema": {"$ref": _REF.format(name="SubscriptionPatch")}}}},
                          "responses": {"200": _answer("Updated.", "SubscriptionOut")}},
            },
            **{f"/api/v1/webhooks/{{subscription_id}}/{action}": {"post": {
                "summary": summary, "parameters": [*_CRED_HEADERS, sub_id],
                "responses": {"200": _answer("Done.", "SubscriptionOut")}}}
               for action, summary in (("disable", "Disable"), ("enable", "Enable"),
                                       ("rotate-secret", "Rotate the secret; both sign for 24 h"))},
            "/api/v1/webhooks/{subscription_id}/deliveries": {"get": {
                "summary": "Deliveries with every attempt (time, status, latency, first 1 KiB, error)",
                "parameters": [*_CRED_HEADERS, sub_id], "responses": {"200": _answer("Deliveries.")}}},
            "/api/v1/webhooks/{subscription_id}/deliveries/{delivery_id}": {"get": {
                "summary": "One delivery with its attempts",
                "parameters": [*_CRED_HEADERS, sub_id, {"name": "delivery_id", "in": "path", "required": True,
                                                        "schema": {"type": "string"}}],
                "responses": {"200": _answer("The delivery.", "DeliveryOut")}}},
            "/api/v1/webhooks/{subscription_id}/replay": {"post": {
                "summary": "Replay every failed delivery since a time ({\"since\": \"...\"})",
                "parameters": [*_CRED_HEADERS, sub_id], "responses": {"200": _answer("Replayed.")}}},
            "/api/v1/webhooks/{subscription_id}/deliveries/{delivery_id}/replay": {"post": {
                "summary": "Replay one delivery (same webhook-id)",
                "parameters": [*_CRED_HEADERS, sub_id, {"name": "delivery_id", "in": "path", "required": True,
                                                        "schema": {"type": "string"}}],
                "responses": {"200": _answer("Replayed.", "DeliveryOut")}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _answer("Alive.")}}},
            "/readyz": {"get": {"summary": "Readiness: Redis and PostgreSQL reachable",
                                "responses": {"200": _answer("Ready."), "503": _answer("Not ready.")}}},
        },
        "components": {"schemas": components},
    }
    return msgspec.json.encode(doc)

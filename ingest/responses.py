"""Clougistic-shaped JSON answers: {"status", "data"} plus errors and warnings where there are any."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared.schemas import Envelope, Problem, json_encoder


def success(data: Any, status: int = 200, warnings: list[Problem] | None = None) -> web.Response:
    """A success answer."""
    body = json_encoder.encode(Envelope(status="success", data=data, warnings=warnings or None))
    return web.Response(body=body, status=status, content_type="application/json")


def failure(status: int, errors: list[Problem], data: Any = None,
            headers: dict[str, str] | None = None) -> web.Response:
    """A failure answer naming what is wrong."""
    body = json_encoder.encode(Envelope(status="failure", data=data, errors=errors))
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def problem(status: int, loc: str, msg: str, **kw: Any) -> web.Response:
    """A failure answer with one error."""
    return failure(status, [Problem(loc=loc, msg=msg)], **kw)

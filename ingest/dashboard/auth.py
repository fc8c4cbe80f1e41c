"""Operator login: scrypt passwords, a server-side session behind an HttpOnly SameSite cookie,
a CSRF token on every action, and an audit row for each of them."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg
from aiohttp import web

from ingest.dashboard.keys import SESSION
from ingest.dashboard.passwords import verify_password
from ingest.dashboard.render import PREFIX, Html, h, page, url
from ingest.keys import POOL, REDIS, SETTINGS
from shared.db import QUERIES
from shared.logging import get_logger
from shared.redis_keys import RedisKeys

log = get_logger(__name__)
SESSION_COOKIE = "orderflow_session"
# the login form's double-submit token: a login form posted from elsewhere is refused
LOGIN_COOKIE = "orderflow_login"
SESSION_TTL_S = 12 * 3600
IDLE_TTL_S = 2 * 3600
LOGIN_PATH = PREFIX + "/login"
STATIC_PREFIX = PREFIX + "/static/"
# each check costs 32 MiB for ~0.1 s: two threads at most, so a burst of logins cannot exhaust memory
_VERIFY_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="password-check")
# Online guessing: at most this many password checks wait per process (the rest get 429), and
# a name/address pair that failed FAILED_LOGINS_MAX times waits FAILED_LOGINS_WINDOW_S.
_CHECK_SLOTS = 8
_checks_waiting = 0
FAILED_LOGINS_MAX = 10
FAILED_LOGINS_WINDOW_S = 900
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class Session:
    """A logged-in operator."""

    operator: str
    csrf_token: str
    token: str


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_session(pool: asyncpg.Pool, operator: str) -> Session:
    """A new session; the cookie carries the token, the table only its hash."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await pool.execute(QUERIES["dash_session_purge"], float(IDLE_TTL_S))
    await pool.execute(QUERIES["dash_session_create"], _token_hash(token), operator, csrf, float(SESSION_TTL_S))
    return Session(operator, csrf, token)


async def load_session(pool: asyncpg.Pool, token: str) -> Session | None:
    """The live session for a cookie value (and mark it used), or None."""
    row = await pool.fetchrow(QUERIES["dash_session_touch"], _token_hash(token), float(IDLE_TTL_S))
    return Session(row["operator"], row["csrf_token"], token) if row else None


async def session_is_alive(pool: asyncpg.Pool, token: str) -> bool:
    """False once the session was logged out, expired, or its operator disabled."""
    return await load_session(pool, token) is not None


async def audit(pool: asyncpg.Pool, operator: str, action: str, target: str = "",
                detail: dict[str, Any] | None = None) -> None:
    """Keep what an operator did, and log it."""
    await pool.execute(QUERIES["dash_audit"], operator, action, target, detail or {})
    log.info("operator_action", operator=operator, action=action, target=target, **(detail or {}))


def _same_origin(request: web.Request) -> bool:
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


async def _csrf_ok(request: web.Request, session: Session) -> bool:
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.post()).get("csrf_token")
        sent = value if isinstance(value, str) else None
    return sent is not None and hmac.compare_digest(sent.encode(), session.csrf_token.encode())


def refusal(status: int, message: str) -> web.Response:
    """A plain page saying why the request was refused."""
    body = page("Refused", h('<p class="error" data-testid="refusal">{}</p><p><a href="{}">Back to the dashboard</a></p>',
                             message, url("/")), operator=None, csrf=None)
    return web.Response(status=status, text=body, content_type="text/html")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every dashboard request needs a session; every action also the session's CSRF token."""
    if request.path == LOGIN_PATH or request.path.startswith(STATIC_PREFIX):
        return await handler(request)
    token = request.cookies.get(SESSION_COOKIE)
    session = await load_session(request.config_dict[POOL], token) if token else None
    if session is None:
        if request.method == "GET" and "text/event-stream" not in request.headers.get("Accept", ""):
            raise web.HTTPSeeOther(LOGIN_PATH + "?next=" + quote(request.path_qs, safe="/"))
        return refusal(401, "Your session has ended: log in again.")
    if request.method not in ("GET", "HEAD"):
        if not _same_origin(request):
            return refusal(403, "Refused: this request came from another site.")
        if not await _csrf_ok(request, session):
            log.warning("csrf_refused", operator=session.operator, path=request.path)
            return refusal(403, "Refused: the CSRF token is missing or wrong. Reload the page and try again.")
    request[SESSION] = session
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """No inline script or style, no framing, nothing from other origins, nothing cached."""
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # not no-referrer: with it browsers send `Origin: null` on form posts, and the origin check needs it
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not request.path.startswith(STATIC_PREFIX):
        response.headers.setdefault("Cache-Control", "no-store")


def over_https(request: web.Request) -> bool:
    """True for HTTPS, also behind a proxy that says so (trusting it can only make cookies stricter)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _safe_next(value: str | None) -> str:
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/"


def _login_page(request: web.Request, *, error: str | None = None, status: int = 200,
                next_url: str | None = None) -> web.Response:
    form_token = secrets.token_urlsafe(24)
    body = h("""<form method="post" action="{action}" class="login" data-testid="login-form">
<input type="hidden" name="login_token" value="{token}">
<input type="hidden" name="next" value="{next}">
{error}
<label>Operator <input name="name" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Log in</button>
</form>""", action=LOGIN_PATH, token=form_token, next=_safe_next(next_url),
             error=h('<p class="error" data-testid="login-error">{}</p>', error) if error else Html(""))
    resp = web.Response(status=status, text=page("Log in", body, operator=None, csrf=None, page_id="login"),
                        content_type="text/html")
    resp.set_cookie(LOGIN_COOKIE, form_token, path=LOGIN_PATH, httponly=True, samesite="Strict",
                    secure=over_https(request), max_age=3600)
    return resp


async def login_form(request: web.Request) -> web.Response:
    """GET /dashboard/login."""
    return _login_page(request, next_url=request.query.get("next"))


async def login(request: web.Request) -> web.Response:
    """POST /dashboard/login: name and password; a session cookie on success."""
    form = await request.post()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    next_url = str(form.get("next", ""))
    sent, expected = str(form.get("login_token", "")), request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()) or not _same_origin(request):
        return _login_page(request, error="The login form expired. Please try again.", status=403,
                           next_url=next_url)
    global _checks_waiting
    redis = request.config_dict[REDIS]
    failures_key = (RedisKeys.for_prefix(request.config_dict[SETTINGS].redis_prefix).rate
                    + "login:" + hashlib.sha256(f"{name}\x1f{request.remote}".encode()).hexdigest()[:32])
    if int(await redis.get(failures_key) or 0) >= FAILED_LOGINS_MAX or _checks_waiting >= _CHECK_SLOTS:
        return _login_page(request, error="Too many attempts. Please wait a while and try again.",
                           status=429, next_url=next_url)
    pool = request.config_dict[POOL]
    row = await pool.fetchrow(QUERIES["dash_operator_get"], name) if name else None
    _checks_waiting += 1
    try:
        ok = await asyncio.get_running_loop().run_in_executor(
            _VERIFY_THREADS, verify_password, password, row["password_hash"] if row else None)
    finally:
        _checks_waiting -= 1
    if not ok:
        log.warning("operator_login_failed", operator=name[:64], address=request.remote)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(failures_key)
            pipe.expire(failures_key, FAILED_LOGINS_WINDOW_S)
            await pipe.execute()
        return _login_page(request, error="Wrong operator name or password.", status=401, next_url=next_url)
    session = await create_session(pool, name)
    await audit(pool, name, "login", detail={"address": request.remote or "-"})
    resp = web.HTTPSeeOther(_safe_next(next_url))
    resp.set_cookie(SESSION_COOKIE, session.token, path=PREFIX, httponly=True, samesite="Strict",
                    secure=over_https(request), max_age=SESSION_TTL_S)
    resp.del_cookie(LOGIN_COOKIE, path=LOGIN_PATH)
    raise resp


async def logout(request: web.Request) -> web.Response:
    """POST /dashboard/logout: the session ends everywhere at once."""
    session = request[SESSION]
    pool = request.config_dict[POOL]
    await pool.execute(QUERIES["dash_session_delete"], _token_hash(session.token))
    await audit(pool, session.operator, "logout")
    resp = web.HTTPSeeOther(LOGIN_PATH)
    resp.del_cookie(SESSION_COOKIE, path=PREFIX)
    raise resp

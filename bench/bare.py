"""The receiver's ceiling: a bare aiohttp app that reads the body and answers 202.

Same aiohttp, same event loop policy, same `web.run_app` options and a 202 body of the
receiver's size, so the difference to `orderflow serve` is orderflow's own work.
`python -m bench.bare --port N`
"""

from __future__ import annotations

import argparse

from aiohttp import web

# About as long as the receiver's 202 answer.
BODY = (b'{"status":"success","data":{"receipt_id":"rcpt_1234567_0123456789ab","reference":"e1-123456",'
        b'"entity_id":"ent_0123456789ab","source_id":"mage2",'
        b'"status_url":"/api/v1/order/receipts/rcpt_1234567_0123456789ab"}}')


async def enqueue(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202, body=BODY, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"success"}', content_type="application/json")


def create_app() -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/api/v1/order/enqueue", enqueue)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, shutdown_timeout=5,
                print=None)


if __name__ == "__main__":
    main()

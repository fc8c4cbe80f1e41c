"""Container HEALTHCHECK for the orderflow image (no curl in python:*-slim).

Which process is this container running? PID 1's command line tells (with or without
`docker run --init`):

- `orderflow serve ... [--port N]`: GET http://127.0.0.1:N/healthz must answer 200 (N defaults
  to ORDERFLOW_PORT, else 8080);
- `orderflow worker`: `orderflow worker --check` decides (a recent heartbeat in Redis);
- anything else (`migrate`, one-off commands): healthy.

Exit 0 healthy, 1 unhealthy, as Docker expects. Standard library only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request


def pid1_argv() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def port_from(argv: list[str]) -> int:
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    return int(os.environ.get("ORDERFLOW_PORT") or 8080)


def main() -> int:
    argv = pid1_argv()
    if "worker" in argv:
        return subprocess.call(["orderflow", "worker", "--check"], timeout=10)
    if "serve" not in argv:
        return 0
    url = f"http://127.0.0.1:{port_from(argv)}/healthz"
    # No proxy: HTTP(S)_PROXY set for webhook delivery must not capture a loopback check.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:  # any failure to answer is unhealthy
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Run a process of the bench on uvloop: `python -m bench.launch orderflow ARGS` or `... bare ARGS`.

The A/B switch behind `python -m bench --uvloop`: the same code, only the event loop policy
differs (uvloop from PyPI), so the run shows what uvloop would give before anyone adds it.
"""

from __future__ import annotations

import asyncio
import sys


def main() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    what, args = sys.argv[1], sys.argv[2:]
    sys.argv = [what, *args]
    if what == "orderflow":
        from shared.cli import main as cli

        cli()
    elif what == "bare":
        from bench.bare import main as bare

        bare()
    else:
        raise SystemExit(f"unknown program {what!r}")


if __name__ == "__main__":
    main()

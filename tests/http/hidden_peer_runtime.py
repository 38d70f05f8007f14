"""Serve app.main:app behind a runtime that hides the connection from the app.

Like tests/vercel_runtime.py, but the runtime's own layer hands the app a `receive` of its
own (a closure), as an ASGI runtime that proxies the messages does: no middleware, inside
or outside FastAPI, can reach uvicorn's transport, so the TCP peer is really unknown.
Usage: python tests/http/hidden_peer_runtime.py PORT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn

ROOT = Path(__file__).resolve().parent.parent.parent


class HidingRuntime:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def relayed() -> Any:
            return await receive()

        await self.app(dict(scope), relayed, send)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from app.main import app

    config = uvicorn.Config(app=HidingRuntime(app), host="127.0.0.1", port=int(sys.argv[1]),
                            lifespan="auto", access_log=False, log_config=None,
                            log_level="warning")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()

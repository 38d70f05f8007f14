"""Serve app/index.py the way Vercel's Python runtime serves an ASGI entrypoint.

The runtime (vercel/vercel, packages/python/vc_init.py) loads the entrypoint file as a
module by its path, wraps the `app` it finds in a pass-through middleware of its own, and
runs uvicorn on a socket it bound itself, with uvicorn's defaults otherwise: proxy headers
on (trusting 127.0.0.1), lifespan auto, no access log, log level warning.  Its own proxy
then forwards each request from 127.0.0.1.  Usage: python tests/support/vercel_runtime.py PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and its tests/http package
# would shadow the standard library's `http`.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import importlib.util
import socket
from typing import Any

import uvicorn

ROOT = Path(__file__).resolve().parents[2]


class RuntimeMiddleware:
    """Like the runtime's: a copy of the scope, the same receive and send."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(dict(scope), receive, send)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("vc_entrypoint", ROOT / "app" / "index.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["vc_entrypoint"] = module
    spec.loader.exec_module(module)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    sock.listen(2048)
    config = uvicorn.Config(app=RuntimeMiddleware(module.app), fd=sock.fileno(),
                            lifespan="auto", access_log=False, log_config=None,
                            log_level="warning")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()

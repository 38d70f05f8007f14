"""Vercel entrypoint alias.

Vercel's zero-config FastAPI detection looks for a top-level `app` in a fixed list of files
(`app/index.py` among them); the application itself is built in `app/main.py`.
"""

from app.main import app

__all__ = ["app"]

#!/usr/bin/env python3
"""Quick start with nothing but Python 3.11+.

    python3 dev.py serve    # set up, migrate, load demo data, serve on http://127.0.0.1:8000
    python3 dev.py test     # set up with test dependencies, run the whole test suite

Both create `.venv/` on first use and reinstall only when pyproject.toml changes.
Extra arguments after `test` go to pytest; after `serve`, to `voyagesmart-cron serve`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def _setup(extra: str) -> None:
    if not PYTHON.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extra.encode()).hexdigest()
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing voyagesmart-cron{extra} into .venv ...", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                   check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-e", f".{extra}"],
                   check=True, cwd=ROOT)
    stamp.write_text(digest)


def _dev_env() -> None:
    env_file = ROOT / ".env"
    if env_file.exists() and "CRON_SECRET=" in env_file.read_text():
        secret = next(line.split("=", 1)[1] for line in env_file.read_text().splitlines()
                      if line.startswith("CRON_SECRET="))
        print(f"using CRON_SECRET from .env: {secret}")
        return
    secret = secrets.token_urlsafe(32)
    with env_file.open("a") as fh:
        fh.write(f"APP_ENV=development\nCRON_SECRET={secret}\n")
    print(f"generated a development CRON_SECRET into .env: {secret}")


def serve(args: list[str]) -> int:
    _setup("")
    _dev_env()
    cli = [str(PYTHON), "-m", "app"]
    subprocess.run([*cli, "migrate"], check=True, cwd=ROOT)
    subprocess.run([*cli, "seed-demo"], check=True, cwd=ROOT)
    port = args[args.index("--port") + 1] if "--port" in args[:-1] else "8000"
    print("try: curl -H \"Authorization: Bearer $(grep ^CRON_SECRET= .env | cut -d= -f2)\" "
          f"http://127.0.0.1:{port}/api/cron/promo-cleanup", flush=True)
    return subprocess.call([*cli, "serve", *args], cwd=ROOT)


def test(args: list[str]) -> int:
    _setup("[dev]")
    return subprocess.call([str(PYTHON), "-m", "pytest", *args], cwd=ROOT)


def main() -> int:
    commands = {"serve": serve, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())

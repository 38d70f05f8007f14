#!/usr/bin/env python3
"""Quick start with nothing but Python 3.11+.

    python3 dev.py serve    # set up, migrate, load demo data, serve on http://127.0.0.1:8000
    python3 dev.py test     # set up with test dependencies, run the whole test suite
    python3 dev.py lint     # ruff check and mypy --strict
    python3 dev.py docs     # regenerate docs/settings.md from app/config.py

Each creates `.venv/` on first use and reinstalls only when pyproject.toml changes.
Extra arguments after `test` go to pytest; after `serve`, to `voyagesmart-cron serve`
(`--port 8001` or `--port=8001`, `--host …`).
"""

from __future__ import annotations

import argparse
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


def _digest(extra: str) -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extra.encode()).hexdigest()


def _setup(extra: str) -> None:
    if not PYTHON.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = _digest(extra)
    stamp = VENV / ".installed"
    # An install with the test dependencies has everything `serve` needs too.
    if stamp.exists() and stamp.read_text() in {digest, _digest("[dev]")}:
        return
    print(f"installing voyagesmart-cron{extra} into .venv ...", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                   check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-e", f".{extra}"],
                   check=True, cwd=ROOT)
    stamp.write_text(digest)


def _dev_env() -> dict[str, str]:
    """The development settings in `.env`, generated the first time: APP_ENV, CRON_SECRET
    and a dashboard login.  What is already there is kept."""
    env_file = ROOT / ".env"
    text = env_file.read_text() if env_file.exists() else ""
    values = dict(line.split("=", 1) for line in text.splitlines()
                  if "=" in line and not line.lstrip().startswith("#"))
    wanted = {
        "APP_ENV": "development",
        "CRON_SECRET": secrets.token_urlsafe(32),
        "DASHBOARD_USER": "admin",
        "DASHBOARD_PASSWORD": secrets.token_urlsafe(18),
    }
    missing = {k: v for k, v in wanted.items() if not values.get(k)}
    if values.get("APP_ENV", "development") != "development":
        missing.pop("DASHBOARD_USER", None)  # not ours to decide outside development
        missing.pop("DASHBOARD_PASSWORD", None)
    if missing:
        with env_file.open("a") as fh:
            if text and not text.endswith("\n"):
                fh.write("\n")
            fh.writelines(f"{key}={value}\n" for key, value in missing.items())
        print(f"wrote {', '.join(missing)} into .env")
    return {**values, **missing}


def serve(args: list[str]) -> int:
    _setup("")
    env = _dev_env()
    cli = [str(PYTHON), "-m", "app"]
    subprocess.run([*cli, "migrate"], check=True, cwd=ROOT)
    subprocess.run([*cli, "seed-demo"], check=True, cwd=ROOT)
    # Read the address the way `voyagesmart-cron serve` will: --port 8001 or --port=8001.
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="8000")
    known, _rest = parser.parse_known_args(args)
    host = "127.0.0.1" if known.host in ("0.0.0.0", "::") else known.host  # noqa: S104
    url = f"http://{host}:{known.port}"
    print(f"service:   {url}  (CRON_SECRET in .env)")
    print("try:       curl -H \"Authorization: Bearer $(grep ^CRON_SECRET= .env | cut -d= -f2)\" "
          f"{url}/api/cron/promo-cleanup")
    if env.get("DASHBOARD_USER") and env.get("DASHBOARD_PASSWORD"):
        print(f"dashboard: {url}/dashboard/  (login: {env['DASHBOARD_USER']} / "
              f"{env['DASHBOARD_PASSWORD']})", flush=True)
    else:
        print("dashboard: off (set DASHBOARD_USER and DASHBOARD_PASSWORD in .env)", flush=True)
    server_env = dict(os.environ)
    if not env.get("SERVICE_BASE_URL") and not os.environ.get("SERVICE_BASE_URL"):
        # The unsubscribe links in the mails this server sends must reach this server.
        server_env["SERVICE_BASE_URL"] = url
    return subprocess.call([*cli, "serve", *args], cwd=ROOT, env=server_env)


def test(args: list[str]) -> int:
    _setup("[dev]")
    return subprocess.call([str(PYTHON), "-m", "pytest", *args], cwd=ROOT)


def lint(args: list[str]) -> int:
    _setup("[dev]")
    ruff = subprocess.call([str(BIN / "ruff"), "check", ".", *args], cwd=ROOT)
    mypy = subprocess.call([str(BIN / "mypy")], cwd=ROOT)
    return ruff or mypy


def docs(args: list[str]) -> int:
    _setup("[dev]")
    return subprocess.call([str(PYTHON), "-m", "app.ops.settings_doc", "--write", *args],
                           cwd=ROOT)


def main() -> int:
    commands = {"serve": serve, "test": test, "lint": lint, "docs": docs}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())

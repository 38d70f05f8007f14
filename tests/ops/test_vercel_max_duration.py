"""vercel.json declares the function's max duration, and it is the budget the service
stops its runs before on Vercel: one number on both sides of the platform's limit."""

from __future__ import annotations

import json
from pathlib import Path

from app.config import Settings
from app.ops import deploy
from tests.conftest import SECRET


def test_vercel_json_declares_the_max_duration_the_runner_stops_before(tmp_path: Path) -> None:
    config = json.loads(deploy.PATHS["vercel"].read_text())
    [(entrypoint, function)] = config["functions"].items()
    # The file Vercel's zero-config FastAPI detection serves the app from.
    assert entrypoint == "app/index.py" and (deploy.ROOT / entrypoint).is_file()
    on_vercel = Settings(_env_file=None, app_env="test", cron_secret=SECRET,  # type: ignore[call-arg]
                         database_url=f"sqlite:///{tmp_path}/x.db", data_dir=tmp_path,
                         vercel=True)
    assert function == {"maxDuration": on_vercel.invocation_seconds} == {"maxDuration": 300}
    # Each layout declares it: the grouped files are deployed the same way.
    for layout in deploy.LAYOUTS:
        assert json.loads(deploy.render("vercel", layout))["functions"] == config["functions"]

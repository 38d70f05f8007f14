"""A real S3 endpoint for tests: `moto_server` in a subprocess on a free port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import SubprocessServer

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


class MotoS3(SubprocessServer):
    name = "moto_server"
    probe = "/moto-api/"

    def __init__(self) -> None:
        super().__init__({"MOTO_ALLOW_NONEXISTENT_REGION": "true"})

    def argv(self) -> list[str]:
        binary = Path(sys.executable).with_name("moto_server")
        return [str(binary), "-H", "127.0.0.1", "-p", str(self.port)]

    def reset(self) -> None:
        httpx.post(self.url + "/moto-api/reset", timeout=10.0)

    @property
    def settings(self) -> dict[str, Any]:
        """Overrides for `make_settings` that point the storage at this server."""
        return {"storage_backend": "s3", "s3_endpoint_url": self.url,
                "s3_region": "us-east-1", "s3_access_key_id": ACCESS_KEY,
                "s3_secret_access_key": SECRET_KEY}


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()

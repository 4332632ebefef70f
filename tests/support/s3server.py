"""A real S3-compatible HTTP server on loopback: moto in server mode, in its own process."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.support.pgserver import free_port, start_server, stop_server

ACCESS_KEY = "AKIAPGSLUICETEST0001"
SECRET_KEY = "pgsluice-test-secret-Zq9xW2"


class S3Server:
    """``moto_server`` on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        self.proc = start_server([exe, "-H", "127.0.0.1", "-p", str(self.port)], self.port, "moto_server")

    def env(self) -> dict[str, str]:
        """The standard AWS variables pgsluice (obstore) and boto3 read."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "PGSLUICE_BACKUP_PATH_STYLE": "true",
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def stop(self) -> None:
        stop_server(self.proc)

"""Azure Blob Storage on loopback: Azurite, Microsoft's emulator (npm package ``azurite``), in its own process.

Installed with npm into ``.cache/azurite`` on first use. pgsluice (obstore) reaches it the
way it reaches Azure: through the standard ``AZURE_*`` variables, with the account key
in the environment.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.pgserver import free_port, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "azurite"
VERSION = "3.35.0"  # pinned: the emulator is part of the test fixture
ACCOUNT = "devstoreaccount1"
# Azurite's one account and its documented, public key (it accepts no other).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteUnavailableError(RuntimeError):
    """Node.js/npm missing, or the npm registry unreachable: the Azure tests skip with this reason."""


def install() -> Path:
    """The azurite-blob executable, installed with npm when missing."""
    exe = CACHE / "node_modules" / ".bin" / "azurite-blob"
    if exe.exists():
        return exe
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise AzuriteUnavailableError("Node.js and npm are needed for Azurite (Debian packages nodejs, npm)")
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", f"azurite@{VERSION}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0 or not exe.exists():
        raise AzuriteUnavailableError(f"npm install azurite failed: {done.stderr.strip()[-300:]}")
    return exe


class AzuriteServer:
    """Azurite's blob service on 127.0.0.1:<free port>, data in memory."""

    def __init__(self) -> None:
        exe = install()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._workdir = tempfile.mkdtemp(prefix="pgsluice-azurite-")
        self.proc = start_server(
            [
                str(exe),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",  # obstore may speak a newer API version than this Azurite
                "--silent",
            ],
            self.port,
            "azurite",
            cwd=self._workdir,  # its debug and extent files, if any, go here
        )

    def env(self) -> dict[str, str]:
        """The standard variables pgsluice (obstore) reads: emulator mode, its URL, the account key."""
        return {
            "AZURE_STORAGE_USE_EMULATOR": "true",
            "AZURITE_BLOB_STORAGE_URL": self.endpoint,
            "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": ACCOUNT_KEY,
        }

    def client(self):  # type: ignore[no-untyped-def]
        """An Azure SDK client for the tests' own setup and checks (containers, listings)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint}/{ACCOUNT};"
        )

    def stop(self) -> None:
        stop_server(self.proc)
        shutil.rmtree(self._workdir, ignore_errors=True)

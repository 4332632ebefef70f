"""Container entrypoint: a thin shim into the CLI."""

from pgsluice.cli import run

run()

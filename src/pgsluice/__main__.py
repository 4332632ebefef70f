"""python -m pgsluice."""

from pgsluice.cli import run

run()

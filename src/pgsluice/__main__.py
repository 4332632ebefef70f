"""python -m pgsluice."""

from pgsluice.cli import main

raise SystemExit(main())

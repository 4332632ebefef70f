"""Container entrypoint: a thin shim into the CLI."""

from pgsluice.cli import main

raise SystemExit(main())

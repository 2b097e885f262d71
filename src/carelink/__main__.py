"""``python -m carelink`` runs the CLI."""

from carelink.cli import main

raise SystemExit(main())

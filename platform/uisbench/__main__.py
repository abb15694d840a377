"""``python -m uisbench`` runs the CLI."""

from uisbench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m smallfit`` runs the CLI."""

from smallfit.cli import main

main()

"""``python -m medmamba``: same as the ``medmamba`` command."""

from medmamba.cli import main

main()

"""`python -m archdsl` is the `archdsl` command."""

from .cli import main

main()

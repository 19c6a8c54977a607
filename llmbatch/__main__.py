"""``python -m llmbatch``."""

from .cli import main

main()

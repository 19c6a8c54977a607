"""``python -m llmbatch``."""

from .entry import main

main()

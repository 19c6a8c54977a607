"""``python -m llmbatch``."""

from llmbatch.cli.app import main

main()

"""``python -m llmbatch``."""

from llmbatch.cli.entry import main

main()

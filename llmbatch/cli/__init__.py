"""The command line (typer): the only layer that turns llmbatch's errors into messages
and exit codes. Nothing below it imports from it (tests/test_layers.py)."""

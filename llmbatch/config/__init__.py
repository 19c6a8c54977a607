"""Configuration: the run options declared once (options.py), the value objects and
built-in provider profiles, and the one merge of defaults, config.toml, ``LLMBATCH_*``
variables and flags (load.py)."""

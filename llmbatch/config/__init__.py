"""Configuration: the run options declared once (options.py), the value objects (model.py),
one value checked (values.py), config.toml and ``LLMBATCH_*`` variables (files.py), provider
profiles (profiles.py), and the one merge of them all with the flags (load.py)."""

"""llmbatch: streaming batch inference over chat APIs."""

__version__ = "0.1.0"

"""First-party routing strategies, installed as ``cmrkit.strategies``."""

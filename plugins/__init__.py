"""First-party training plugins, installed as ``cmrkit.plugins``."""

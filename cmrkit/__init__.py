"""cmrkit: continual model routing on Avalanche.

A router maps a prompt to one model id out of a model hub that grows in experiences. cmrkit ships
the CMRBench stream as an Avalanche benchmark, routing strategies written as Avalanche strategies,
and pluggy plugins (anchoring, replay, adapter merging) discovered through entry points.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger("cmrkit").addHandler(logging.NullHandler())

__all__ = ["__version__"]

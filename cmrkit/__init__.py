"""cmrkit: continual model routing on Avalanche.

A router maps a prompt to one model id out of a model hub that grows in experiences. cmrkit ships
the CMRBench stream as an Avalanche benchmark, routing strategies written as Avalanche strategies,
and pluggy plugins (anchoring, replay, adapter merging) discovered through entry points.
"""

from __future__ import annotations

import logging
import warnings

__version__ = "0.1.0"

logging.getLogger("cmrkit").addHandler(logging.NullHandler())

# Avalanche 0.6 imports qpsolvers (for GEM), which warns at import when no QP solver is
# installed. cmrkit never calls a QP solver, so that one message is silenced.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

__all__ = ["__version__"]

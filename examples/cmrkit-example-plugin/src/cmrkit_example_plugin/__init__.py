"""Example cmrkit plugin: a nearest-mean router, a round-robin replay policy, a models-added log.

cmrkit loads :mod:`cmrkit_example_plugin.hooks` through the ``cmrkit.plugins`` entry point named
``example``. The hook module imports the strategy and the policy only when cmrkit calls it, so
``cmrkit plugins`` stays fast even when the implementations need torch.
"""

__version__ = "0.1.0"

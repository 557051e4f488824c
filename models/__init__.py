"""The nets, one file per family, built by name from one registry.

Each entry pairs a dataclass config with the nn.Module it configures, so a
checkpoint (state_dict + config dict) rebuilds its net without pickling code.
"""

import importlib
import pkgutil

from models.registry import ModelEntry, build_model, config_from_dict, list_models, register_net

# Every module of the package is imported, and importing a net's module registers it: no list to edit.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ModelEntry", "build_model", "config_from_dict", "list_models", "register_net"]

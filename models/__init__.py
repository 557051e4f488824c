"""The nets, one file per family, built by name from one registry.

Each entry pairs a dataclass config with the nn.Module it configures, so a
checkpoint (state_dict + config dict) rebuilds its net without pickling code.
"""

from models import cnn, generative, rnn, transformer  # noqa: F401  (importing a family registers it)
from models.registry import ModelEntry, build_model, config_from_dict, list_models, register_net

__all__ = ["ModelEntry", "build_model", "config_from_dict", "list_models", "register_net"]

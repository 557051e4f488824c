"""Name -> (config class, module class): the one way to build a net."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    config_cls: type
    module_cls: type[nn.Module]


_REGISTRY: dict[str, ModelEntry] = {}


@runtime_checkable
class Transferable(Protocol):
    """A classifier that fine-tuning can start from (training/tasks/transfer.py): two seams the net declares and generic
    code reads, timm's way."""

    head: nn.Module  # the classifier head: built anew for the new classes, always trained

    def blocks(self) -> list[nn.Module]:
        """The body, input first: kept from the parent, frozen unless the last is unfrozen."""
        ...


def register_net(name: str, config_cls: type):
    """Class decorator: `@register_net("cnn", CNNConfig)` above an nn.Module."""

    def wrap(module_cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(config_cls, module_cls)
        return module_cls

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None


def config_from_dict(name: str, values: dict[str, Any]) -> Any:
    """Rebuild a model's config from a plain dict, ignoring nothing: unknown keys are an error."""
    config_cls = _entry(name).config_cls
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{name}: unknown config fields {sorted(unknown)}; known: {sorted(known)}")
    return config_cls(**values)


def build_model(name: str, config: Any = None) -> nn.Module:
    entry = _entry(name)
    return entry.module_cls(config if config is not None else entry.config_cls())

"""The tasks the road knows, by the name their models get in the store."""

from __future__ import annotations

import importlib
import pkgutil

from training.tasks.base import REGISTERED, Task

# Every module of the package is imported, and a task module registers its tasks (`register_task`): no list to edit.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
# Tasks that need another's model come after it (its evaluation uses that model).
TASKS: dict[str, Task] = dict(sorted(REGISTERED.items(), key=lambda item: bool(item[1].needs)))


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None

"""The tasks the road knows, by the name their models get in the store."""

from __future__ import annotations

from training.tasks.base import Task
from training.tasks.generation import ImageGenerationTask
from training.tasks.images import ImageClassificationTask
from training.tasks.series import ForecastTask
from training.tasks.text import TextClassificationTask

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        ImageClassificationTask(),
        ForecastTask("lstm"),
        ForecastTask("gru"),
        TextClassificationTask(),
        ImageGenerationTask(),  # last: its evaluation judges samples with the CNN above
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None

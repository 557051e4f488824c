"""`python -m training report`: the results tables, in Markdown, from the model cards in the store.

docs/training.md's results are this command's output: a table per model (its test metrics, its variants',
its baselines' on the same test split) and a line saying how and on what machine it was trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import bentoml


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} m {rest:02d} s" if minutes else f"{rest} s"


def _row(name: str, values: Mapping[str, float], columns: list[str], bold: str | None = None) -> str:
    cells = []
    for column in columns:
        value = values.get(column)
        text = "–" if value is None else f"{value:.4f}"
        cells.append(f"**{text}**" if column == bold and value is not None else text)
    return f"| {name} | " + " | ".join(cells) + " |"


def model_table(card: Mapping[str, Any], tag: str, variants: list[tuple[str, Mapping[str, Any]]]) -> str:
    """One model's table: the model (key metric in bold), its variants, its baselines; then how it was trained."""
    metrics = _scalars(card.get("metrics", {}))
    key = card.get("key_metric", "")
    columns = [key, *sorted(k for k in metrics if k != key)] if key in metrics else sorted(metrics)
    lines = [
        f"**{tag}** ({card.get('task', '?')}, {card.get('family', '?')}; data: {card.get('data_source', '?')})",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        _row(tag.split(":")[0], metrics, columns, bold=key),
    ]
    for variant_tag, variant in variants:
        lines.append(_row(variant_tag.split(":")[0], _scalars(variant.get("metrics", {})), columns))
    for name, scores in card.get("baseline", {}).items():
        lines.append(_row(f"{name} (baseline)", _scalars(scores), columns))
    lines += ["", training_line(card)]
    return "\n".join(lines)


def training_line(card: Mapping[str, Any]) -> str:
    cfg, machine = card.get("train_config", {}), card.get("machine", {})
    epochs = len(card.get("history", []))
    pretrained = len(card.get("pretraining", []))
    where = (
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('device', '?')}; "
        f"{machine.get('processes', 1)} process(es) × {machine.get('threads_per_process', '?')} threads"
        if machine
        else "machine not recorded"
    )
    parts = [
        f"{epochs} epoch{'s' * (epochs != 1)}" + (f" after {pretrained} of pretraining" if pretrained else ""),
        f"{_duration(card['train_seconds'])} of training" if "train_seconds" in card else None,
        f"precision {cfg.get('precision', 'fp32')}, seed {cfg.get('seed', '?')}",
        where,
        f"ONNX parity {card['parity_max_abs_diff']:.1e}" if "parity_max_abs_diff" in card else None,
        f"tuned: study {card['tuning']['study']}, trial #{card['tuning']['best_trial']}" if "tuning" in card else None,
    ]
    return "Trained: " + "; ".join(p for p in parts if p) + "."


def results_tables(latest_only: bool = True) -> str:
    """Markdown for every model in the store (by default the latest version of each name), variants folded
    into their model's table."""
    stored = sorted(bentoml.models.list(), key=lambda m: (m.tag.name, m.info.metadata.get("created_at", "")))
    if latest_only:
        stored = list({m.tag.name: m for m in stored}.values())
    variants: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for model in stored:
        meta = model.info.metadata
        if "variant_of" in meta:
            variants.setdefault(meta["variant_of"], []).append((str(model.tag), meta))
    sections = [
        model_table(model.info.metadata, str(model.tag), variants.get(str(model.tag), []))
        for model in stored
        if "variant_of" not in model.info.metadata
    ]
    return "\n\n".join(sections) if sections else "No models in the store: `python -m training ensure` trains them."

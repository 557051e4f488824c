"""`python -m training drift LOG_DIR`: are the inputs the platform logged (services/ops/payloads.py) like the
training data? No training data is needed: each model's card holds summaries of its training inputs
(`reference`, contracts/summaries.py), and the logged lines hold the same summaries of served ones.

Per model version: a two-sample Kolmogorov-Smirnov test (scipy) per summary field, logged against the
reference, and a binomial test of the share of answers flagged out of distribution against the false-alarm
rate its threshold was set at. A Markdown report and one PNG of histograms per model.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from contracts.card import ModelCard

log = logging.getLogger(__name__)

ALPHA = 0.01  # a test's p-value below this reports drift


@dataclass(frozen=True)
class FieldDrift:
    field: str
    reference_median: float
    logged_median: float
    statistic: float  # Kolmogorov-Smirnov D: the largest gap between the two distribution functions
    p_value: float

    @property
    def drifted(self) -> bool:
        return self.p_value < ALPHA


@dataclass(frozen=True)
class OodShare:
    flagged: int
    answers: int
    expected: float  # the false-alarm rate the threshold was set at
    p_value: float  # of seeing this many flagged, or more, at the expected rate

    @property
    def drifted(self) -> bool:
        return self.p_value < ALPHA


@dataclass
class ModelDrift:
    model: str
    version: str
    lines: int
    fields: list[FieldDrift]
    ood: OodShare | None
    problem: str = ""  # why it was not compared

    @property
    def drifted(self) -> bool:
        return any(f.drifted for f in self.fields) or bool(self.ood and self.ood.drifted)


def read_logs(log_dir: Path) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], int]:
    """Logged lines by (model, version), the rotated files too; and how many lines could not be read."""
    lines: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    unreadable = 0
    for path in sorted(log_dir.glob("payloads-*.jsonl*")):
        for raw in path.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
                lines[line["model"], line["version"]].append(line)
            except (ValueError, KeyError, TypeError):
                unreadable += 1  # a line cut by a crash, or not ours
    return dict(lines), unreadable


def logged_values(lines: list[dict[str, Any]], field: str) -> list[float]:
    """A summary field's values in the logged lines that hold it as a number."""
    return [line["input"][field] for line in lines if isinstance(line.get("input", {}).get(field), int | float)]


def compare(model: str, version: str, lines: list[dict[str, Any]], card: ModelCard) -> ModelDrift:
    fields = []
    for field, reference in card.reference.items():
        logged = logged_values(lines, field)
        if logged:
            test = stats.ks_2samp(reference, logged)
            fields.append(
                FieldDrift(field, float(np.median(reference)), float(np.median(logged)), test.statistic, test.pvalue)
            )
    verdicts = [line["answer"]["in_distribution"] for line in lines if "in_distribution" in line.get("answer", {})]
    ood = None
    target = card.ood.target_fpr
    if verdicts and target is not None:
        flagged = sum(not v for v in verdicts)
        test = stats.binomtest(flagged, len(verdicts), target, alternative="greater")
        ood = OodShare(flagged, len(verdicts), target, test.pvalue)
    return ModelDrift(model, version, len(lines), fields, ood)


def plot(drift: ModelDrift, reference: dict[str, list[float]], lines: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(drift.fields), figsize=(4 * len(drift.fields), 3.2), squeeze=False)
    for ax, field in zip(axes[0], drift.fields):
        logged = logged_values(lines, field.field)
        both = np.concatenate([reference[field.field], logged])
        bins = np.linspace(both.min(), both.max() + 1e-9, 40)
        ax.hist(reference[field.field], bins, density=True, alpha=0.5, label="training")
        ax.hist(logged, bins, density=True, histtype="step", linewidth=1.5, label="logged")
        ax.set_title(f"{field.field}: D={field.statistic:.2f}" + (" (drift)" if field.drifted else ""), fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{drift.model}:{drift.version}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(drifts: list[ModelDrift], log_dir: Path, unreadable: int) -> str:
    out = [
        "# Drift report",
        "",
        f"Logs: `{log_dir}` · written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · "
        f"tests at p < {ALPHA} · {unreadable} unreadable lines",
        "",
    ]
    for d in drifts:
        out += [f"## {d.model}:{d.version}: " + ("drift" if d.drifted else "no drift found"), ""]
        if d.problem:
            out += [d.problem, ""]
            continue
        out += [
            f"{d.lines} logged predictions.",
            "",
            "| input field | training median | logged median | KS statistic | p-value | drift |",
            "|---|---:|---:|---:|---:|---|",
        ]
        out += [
            f"| {f.field} | {f.reference_median:.4g} | {f.logged_median:.4g} | {f.statistic:.3f} | {f.p_value:.2g} "
            f"| {'yes' if f.drifted else 'no'} |"
            for f in d.fields
        ]
        if d.ood:
            out += [
                "",
                f"Out-of-distribution answers: {d.ood.flagged} of {d.ood.answers} "
                f"({d.ood.flagged / d.ood.answers:.1%}; {d.ood.expected:.0%} expected from the threshold), "
                f"binomial p = {d.ood.p_value:.2g}" + (": **more than expected**" if d.ood.drifted else "."),
            ]
        out += ["", f"![{d.model}]({d.model}-{d.version}.png)" if d.fields else "", ""]
    return "\n".join(out)


def drift_report(log_dir: Path, out_dir: Path) -> list[ModelDrift]:
    """Compare every logged model version with its card's reference; write report.md and the PNGs."""
    import bentoml

    lines, unreadable = read_logs(log_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drifts = []
    for (model, version), logged in sorted(lines.items()):
        try:
            card = ModelCard.from_metadata(bentoml.models.get(f"{model}:{version}").info.metadata)
        except bentoml.exceptions.NotFound:
            drifts.append(ModelDrift(model, version, len(logged), [], None, "Not in the model store: not compared."))
            continue
        if not card.reference:
            problem = (
                "Its card has no reference summaries (trained before they existed, or its inputs are not data: "
                "a generator's seeds): not compared."
            )
            drifts.append(ModelDrift(model, version, len(logged), [], None, problem))
            continue
        drift = compare(model, version, logged, card)
        if drift.fields:
            plot(drift, card.reference, logged, out_dir / f"{model}-{version}.png")
        drifts.append(drift)
    (out_dir / "report.md").write_text(markdown(drifts, log_dir, unreadable))
    return drifts

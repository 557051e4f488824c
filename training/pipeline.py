"""train -> evaluate -> export -> parity -> register: the road every task takes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from contracts.card import ModelCard, OodRecord
from contracts.summaries import columns
from models import build_model, config_from_dict
from training.config import TrainConfig
from training.distributed import Ranks, start, stop
from training.evaluate import plot_history
from training.export import check_parity, export_companion, export_onnx, output_difference
from training.loop import Trained, fit, net_config, pick_device
from training.ood import PredictScored, fit_scored, ood_report
from training.progress import ProgressReport
from training.register import register_model
from training.tasks import get_task
from training.tasks.base import Predict, Prepared, Task
from training.weights import WEIGHTS_FILE, save_weights

log = logging.getLogger(__name__)


def onnx_predictor(task: Task, path: Path) -> PredictScored:
    """The exported graph as a function: (inputs...) -> (the task's output, the OOD score; None without one)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [spec.name for spec in task.inputs]

    def predict(*inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        output, *score = session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})
        return output, score[0] if score else None

    return predict


def first_output(predict: PredictScored) -> Predict:
    return lambda *inputs: predict(*inputs)[0]


def save_card(cfg: TrainConfig, name: str, onnx_path: Path, files: dict[str, Path], card: ModelCard, out_dir: Path):
    """Register the model (when asked) and write card.json beside it; returns the card as stored, with its `tag`."""
    metadata = card.to_metadata()
    if cfg.register:
        tag, metadata = register_model(name, {"model.onnx": onnx_path, **files}, card)
        metadata = {**metadata, "tag": tag}
    (out_dir / "card.json").write_text(json.dumps(metadata, indent=2, default=str))
    return metadata


def machine(cfg: TrainConfig, ranks: Ranks) -> dict[str, Any]:
    """Where a model was trained, for the card and the report: results are only comparable on alike machines."""
    device = pick_device(cfg.device, ranks)
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processes": ranks.world,
        "threads_per_process": cfg.threads,
        "torch": torch.__version__,
    }


@dataclass(frozen=True)
class Exported:
    """The trained net with its OOD score, exported to ONNX and held to parity with PyTorch; and its companions."""

    scored: nn.Module
    examples: list[tuple[torch.Tensor, ...]]
    path: Path
    opset: int
    parity: float
    companions: dict[str, Path]  # stored file name -> path
    companions_parity: dict[str, float]


def export(task: Task, trained: Trained, data: Prepared, run_dir: Path) -> Exported:
    # From a fresh module holding the best weights: re-exporting a module that was traced before can freeze
    # dynamic axes (seen with nn.LSTM).
    net = build_model(task.model, config_from_dict(task.model, trained.model_config))
    net.load_state_dict(trained.model.state_dict())
    net.eval()
    graph = task.graph(net)
    scored = fit_scored(task, graph, data) if task.scores_ood else graph.eval()
    examples = task.export_inputs(data)
    path = run_dir / "model.onnx"
    opset = export_onnx(scored, task, examples[0], path)
    parity = check_parity(scored, task, path, examples)
    companions = {c.file: export_companion(c, run_dir) for c in task.companions(net, data)}
    return Exported(
        scored,
        examples,
        path,
        opset,
        parity,
        {file: path for file, (path, _) in companions.items()},
        {file: difference for file, (_, difference) in companions.items()},
    )


def interface_card(task: Task, cfg: TrainConfig, data: Prepared) -> ModelCard:
    """What the model will take and answer, known before training: a server builds a family's routes from it
    while the model trains (contracts/progress.py)."""
    return ModelCard(
        task=task.kind,
        family=task.model,
        inputs=task.inputs,
        output=task.output_name,
        labels=tuple(data.labels or ()),
        preprocessing=data.preprocessing,
        key_metric=task.key_metric,
        example=task.example(data),
        model_config=net_config(task, data, cfg),
    )


def evaluated_card(
    task: Task, cfg: TrainConfig, data: Prepared, trained: Trained, exported: Exported, extra: dict[str, Any]
) -> ModelCard:
    """The card of the exported graph: test metrics and the OOD threshold describe what will be served."""
    predict = onnx_predictor(task, exported.path)
    summaries = task.reference_summaries(data)
    return dataclasses.replace(
        interface_card(task, cfg, data),
        metrics=task.evaluate(first_output(predict), data, cfg.run_dir()),
        baseline=task.baseline(data),
        ood=OodRecord.from_metadata(ood_report(predict, task, data, cfg.run_dir())) if task.scores_ood else OodRecord(),
        reference=columns(summaries) if summaries else {},
        parity_max_abs_diff=exported.parity,
        opset=exported.opset,
        model_config=trained.model_config,
        train_config=asdict(cfg),
        val_loss=min(h["val_loss"] for h in trained.history),
        data_source=data.source,
        data_fingerprint=data.fingerprint,
        parent=task.lineage(),
        extra=extra,
    )


def save_variants(
    task: Task, cfg: TrainConfig, data: Prepared, exported: Exported, card: ModelCard, tag: str | None
) -> None:
    """Each variant of the graph (e.g. int8) with its own parity, metrics and OOD threshold: its own arithmetic."""
    for suffix, path in task.variants(exported.path, cfg.run_dir()).items():
        out = cfg.run_dir() / suffix
        out.mkdir(exist_ok=True)
        difference, same, _ = output_difference(exported.scored, task, path, exported.examples)
        predict = onnx_predictor(task, path)
        variant = dataclasses.replace(
            card,
            variant=suffix,
            variant_of=tag,
            parity_max_abs_diff=difference,
            metrics=task.evaluate(first_output(predict), data, out),
            ood=OodRecord.from_metadata(ood_report(predict, task, data, out)),
            extra={**card.extra, "parity_same_decisions": same},
        )
        stored = save_card(cfg, f"{task.name}-{suffix}", path, data.files, variant, out)
        registered = f", registered {stored['tag']}" if "tag" in stored else ""
        log.info(
            "%s-%s: test %s %.4f%s", task.name, suffix, task.key_metric, variant.metrics[task.key_metric], registered
        )


def loaded(cfg: TrainConfig, task: Task | None = None) -> tuple[Prepared, ProgressReport]:
    """A task's data, and its progress record queued with the interface its model will have. `task`: when not one
    of TASKS (a fine-tuning run's), else the one named by cfg.task."""
    task = task or get_task(cfg.task)
    report = ProgressReport(task.name, 1 if cfg.dry_run else cfg.epochs, task.expected_seconds)
    try:
        data = task.load_data(cfg)
    except BaseException as exc:
        report.failed(exc)
        raise
    report.queued(interface_card(task, cfg, data))
    return data, report


def run(
    cfg: TrainConfig,
    tuning: dict[str, Any] | None = None,
    prepared: tuple[Prepared, ProgressReport] | None = None,
    task: Task | None = None,
) -> dict[str, Any] | None:
    """Train one task end to end; returns the model card as stored (with `tag` when registered).

    Under torchrun every rank trains; rank 0 alone exports, registers and returns the card (others: None).
    `tuning`: the Optuna study the parameters came from, recorded in the card. `prepared`: its data and progress
    record, when loaded beforehand (`loaded`). `task`: as for `loaded`. A failure is recorded in the progress record,
    then raised."""
    task = task or get_task(cfg.task)
    data, report = prepared or loaded(cfg, task)
    try:
        return trained_and_registered(task, cfg, tuning, data, report)
    except BaseException as exc:
        report.failed(exc)
        raise


def trained_and_registered(
    task: Task, cfg: TrainConfig, tuning: dict[str, Any] | None, data: Prepared, report: ProgressReport
) -> dict[str, Any] | None:
    ranks = start(cuda=pick_device(cfg.device).type == "cuda")
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    if ranks.leader:
        cfg.save(run_dir / "config.json")
    log.info(
        "%s: %d train / %d val / %d test from %s",
        task.name,
        len(data.train),
        len(data.val),
        len(data.test),
        data.source,
    )
    report.training()
    trained = fit(task, data, cfg, run_dir, ranks, on_epoch=lambda history, _: report.epoch(history))
    stop(ranks)  # every rank has finished its steps; rank 0 alone goes on to export
    if not ranks.leader:
        return None
    report.exporting()
    plot_history(trained.history, run_dir / "training_curves.png")
    exported = export(task, trained, data, run_dir)
    extra = {
        "history": trained.history,
        **({"pretraining": trained.pretraining} if trained.pretraining else {}),
        "train_seconds": round(trained.seconds, 1),
        "machine": machine(cfg, ranks),
        **({"tuning": tuning} if tuning else {}),
    }
    if exported.companions_parity:
        extra["companions_parity"] = exported.companions_parity
    card = evaluated_card(task, cfg, data, trained, exported, extra)
    weights = save_weights(trained.model, run_dir / WEIGHTS_FILE)  # what a fine-tune starts from
    files = {
        **data.files,
        **exported.companions,
        WEIGHTS_FILE: weights,
        **{name: run_dir / name for name in task.artifacts},
    }
    stored = save_card(cfg, task.name, exported.path, files, card, run_dir)
    save_variants(task, cfg, data, exported, card, stored.get("tag"))
    ood = card.ood.evaluation
    log.info(
        "%s: test %s %.4f (baselines: %s), parity %.1e%s%s",
        task.name,
        task.key_metric,
        card.metrics[task.key_metric],
        card.baselines_line,
        exported.parity,
        f", OOD AUROC {ood['all']['auroc']:.3f} at {100 * ood['test_fpr']:.1f}% test false alarms" if ood else "",
        f", registered {stored['tag']}" if "tag" in stored else "",
    )
    if "tag" in stored:
        report.registered(stored)
    return stored

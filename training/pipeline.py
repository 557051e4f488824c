"""train -> evaluate -> export -> parity -> register: the road every task takes."""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from contracts.summaries import columns
from models import build_model, config_from_dict
from training.config import TrainConfig
from training.distributed import Ranks, start, stop
from training.evaluate import plot_history
from training.export import check_parity, export_onnx, output_difference
from training.loop import fit, pick_device
from training.ood import PredictScored, fit_scored, ood_report
from training.register import register_model
from training.tasks import get_task
from training.tasks.base import Predict, Task

log = logging.getLogger(__name__)


def onnx_predictor(task: Task, path: Path) -> PredictScored:
    """The exported graph as a function: (inputs...) -> (the task's output, the OOD score)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [spec.name for spec in task.inputs]

    def predict(*inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        output, score = session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})
        return output, score

    return predict


def first_output(predict: PredictScored) -> Predict:
    return lambda *inputs: predict(*inputs)[0]


def save_card(
    task: Task,
    cfg: TrainConfig,
    name: str,
    onnx_path: Path,
    files: dict[str, Path],
    card: dict[str, Any],
    out_dir: Path,
) -> None:
    """Register the model (when asked; the card gains its `tag`) and write card.json beside it."""
    if cfg.register:
        labels = {
            "family": task.model,
            "task": task.kind,
            **({"variant": card["variant"]} if "variant" in card else {}),
        }
        card["tag"] = register_model(name, {"model.onnx": onnx_path, **files}, card, labels=labels)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2, default=str))


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


def run(cfg: TrainConfig, tuning: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Train one task end to end; returns the model card (with `tag` when registered).

    Under torchrun every rank trains; rank 0 alone exports, registers and returns the card (others: None).
    `tuning`: the Optuna study the parameters came from, recorded in the card."""
    task = get_task(cfg.task)
    ranks = start(cuda=pick_device(cfg.device).type == "cuda")
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    if ranks.leader:
        cfg.save(run_dir / "config.json")

    data = task.load_data(cfg)
    log.info(
        "%s: %d train / %d val / %d test from %s",
        task.name,
        len(data.train),
        len(data.val),
        len(data.test),
        data.source,
    )
    trained = fit(task, data, cfg, run_dir, ranks)
    stop(ranks)  # every rank has finished its steps; rank 0 alone goes on to export
    if not ranks.leader:
        return None
    plot_history(trained.history, run_dir / "training_curves.png")

    # Export from a fresh module holding the best weights: re-exporting a module that was traced
    # before can freeze dynamic axes (seen with nn.LSTM).
    net = build_model(task.model, config_from_dict(task.model, trained.model_config))
    net.load_state_dict(trained.model.state_dict())
    net.eval()
    scored = fit_scored(task, net, data)
    examples = task.export_inputs(data)
    onnx_path = run_dir / "model.onnx"
    opset = export_onnx(scored, task, examples[0], onnx_path)
    parity = check_parity(scored, task, onnx_path, examples)

    # Test metrics and the OOD threshold come from the exported graph: they describe what will be served.
    predict = onnx_predictor(task, onnx_path)
    metrics = task.evaluate(first_output(predict), data, run_dir)
    ood = ood_report(predict, task, data, run_dir)
    baseline = task.baseline(data)
    card = {
        "family": task.model,
        "task": task.kind,
        "inputs": [spec.to_dict() for spec in task.inputs],
        "output": task.output_name,
        "preprocessing": data.preprocessing,
        "labels": data.labels,
        "key_metric": task.key_metric,
        "metrics": metrics,
        "baseline": baseline,
        "ood": ood,
        "reference": columns(task.reference_summaries(data)),
        "parity_max_abs_diff": parity,
        "opset": opset,
        "model_config": trained.model_config,
        "train_config": asdict(cfg),
        "history": trained.history,
        **({"pretraining": trained.pretraining} if trained.pretraining else {}),
        "val_loss": min(h["val_loss"] for h in trained.history),
        "train_seconds": round(trained.seconds, 1),
        "machine": machine(cfg, ranks),
        **({"tuning": tuning} if tuning else {}),
        "data_source": data.source,
        "data_fingerprint": data.fingerprint,
    }
    save_card(task, cfg, task.name, onnx_path, data.files, card, run_dir)
    for suffix, path in task.variants(onnx_path, run_dir).items():
        (run_dir / suffix).mkdir(exist_ok=True)
        difference, same, _ = output_difference(scored, task, path, examples)
        predict = onnx_predictor(task, path)
        variant = {k: v for k, v in card.items() if k != "tag"}
        variant.update(
            variant=suffix,
            variant_of=card.get("tag"),
            parity_max_abs_diff=difference,
            parity_same_decisions=same,
            metrics=task.evaluate(first_output(predict), data, run_dir / suffix),
            ood=ood_report(predict, task, data, run_dir / suffix),  # its own threshold: its own arithmetic
        )
        save_card(task, cfg, f"{task.name}-{suffix}", path, data.files, variant, run_dir / suffix)
        log.info(
            "%s-%s: test %s %.4f%s",
            task.name,
            suffix,
            task.key_metric,
            variant["metrics"][task.key_metric],
            f", registered {variant['tag']}" if "tag" in variant else "",
        )
    baselines = ", ".join(f"{name} {scores[task.key_metric]:.4f}" for name, scores in baseline.items())
    log.info(
        "%s: test %s %.4f (baselines: %s), parity %.1e, OOD AUROC %.3f at %.1f%% test false alarms%s",
        task.name,
        task.key_metric,
        metrics[task.key_metric],
        baselines,
        parity,
        ood["all"]["auroc"],
        100 * ood["test_fpr"],
        f", registered {card['tag']}" if "tag" in card else "",
    )
    return card

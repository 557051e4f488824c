"""The one training loop every family goes through.

AdamW, linear warm-up then cosine decay, early stopping on validation (score, else loss),
a checkpoint every epoch ({model, optimizer, scheduler, config, epoch, best}; never a pickled module).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from models import build_model, config_from_dict
from training.config import TrainConfig
from training.tasks.base import Prepared, Task

log = logging.getLogger(__name__)


@dataclass
class Trained:
    model: nn.Module  # the best weights on validation, in eval mode
    model_config: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_loader(
    task: Task, dataset: TensorDataset, batch_size: int, shuffle: bool, generator: torch.Generator
) -> DataLoader:
    sampler = task.batches(dataset, batch_size, shuffle, generator)
    if sampler is not None:
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=task.collate)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, generator=generator, collate_fn=task.collate
    )


@torch.no_grad()
def validate(
    model: nn.Module, task: Task, loader: DataLoader, class_weights: torch.Tensor | None
) -> tuple[float, float | None]:
    """Mean loss, and the task's score over the whole validation set (e.g. macro-F1 is not a mean of batches)."""
    model.eval()
    total, all_outputs, all_targets = 0.0, [], []
    for *inputs, targets in loader:
        outputs = model(*inputs)
        total += task.loss(outputs, targets, class_weights).item() * len(targets)
        all_outputs.append(outputs)
        all_targets.append(targets)
    targets = torch.cat(all_targets)
    return total / len(targets), task.score(torch.cat(all_outputs), targets)


def fit(task: Task, data: Prepared, cfg: TrainConfig, run_dir: Path) -> Trained:
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model_config = dataclasses.asdict(config_from_dict(task.model, {**task.model_config(data), **cfg.model}))
    model = build_model(task.model, config_from_dict(task.model, model_config))
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = make_loader(task, data.train, cfg.batch_size, shuffle=True, generator=generator)
    val_loader = make_loader(task, data.val, 512, shuffle=False, generator=generator)
    epochs = 1 if cfg.dry_run else cfg.epochs
    steps_per_epoch = min(len(train_loader), 5) if cfg.dry_run else len(train_loader)
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, min(cfg.warmup_steps, total_steps // 10), total_steps)
    )

    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    start_epoch, best, stale, history = 0, math.inf, 0, []
    if cfg.resume and last_path.exists():
        state = torch.load(last_path, weights_only=True)
        if state["model_config"] != model_config:
            raise ValueError(f"{last_path} was trained with another net config; remove it or drop --resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, best, stale, history = state["epoch"] + 1, state["best"], state["stale"], state["history"]
        log.info("resumed from %s at epoch %d", last_path, start_epoch)

    started = time.monotonic()
    for epoch in range(start_epoch, epochs):
        model.train()
        running, seen = 0.0, 0
        bar = tqdm(
            train_loader,
            total=steps_per_epoch,
            desc=f"{task.name} epoch {epoch + 1}/{epochs}",
            leave=False,
            mininterval=1.0,
            disable=None,
        )  # disable=None: no bar in logs, only on a terminal
        for step, (*inputs, targets) in enumerate(bar):
            if step == steps_per_epoch:
                break
            outputs = model(*task.augment(tuple(inputs), generator))
            loss = task.loss(outputs, targets, data.class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            running, seen = running + loss.item(), seen + 1
            if not bar.disable:
                score = task.score(outputs.detach(), targets)
                bar.set_postfix(
                    loss=f"{running / seen:.4f}", **({"score": f"{score:.3f}"} if score is not None else {})
                )

        val_loss, val_score = validate(model, task, val_loader, data.class_weights)
        record = {
            "epoch": epoch + 1,
            "train_loss": running / seen,
            "val_loss": val_loss,
            "lr": scheduler.get_last_lr()[0],
        }
        if val_score is not None:
            record["val_score"] = val_score
        history.append(record)
        # Lower is better. Classifiers are judged on their validation score: with label smoothing the loss
        # rises as answers grow confident while accuracy still improves.
        objective = -val_score if val_score is not None else val_loss
        improved = objective < best
        best, stale = (objective, 0) if improved else (best, stale + 1)
        if improved:
            torch.save({"model": model.state_dict(), "model_config": model_config, "epoch": epoch}, best_path)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "model_config": model_config,
                "epoch": epoch,
                "best": best,
                "stale": stale,
                "history": history,
            },
            last_path,
        )
        log.info(
            "%s epoch %d: %s%s",
            task.name,
            epoch + 1,
            {k: round(v, 4) for k, v in record.items()},
            " (best)" if improved else "",
        )
        if stale >= cfg.patience:
            log.info("early stop: no better validation result for %d epochs", stale)
            break
        if cfg.max_minutes is not None and (time.monotonic() - started) / 60 >= cfg.max_minutes:
            log.info("time budget of %.1f min spent: stopping after epoch %d", cfg.max_minutes, epoch + 1)
            break

    model.load_state_dict(torch.load(best_path, weights_only=True)["model"])
    model.eval()
    return Trained(model, model_config, history, time.monotonic() - started)

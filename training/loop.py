"""The one training loop every family goes through.

AdamW, linear warm-up then cosine decay, early stopping on validation (score, else loss),
a checkpoint every epoch ({model, optimizer, scheduler, config, epoch, best}; never a pickled module).
Budgets are epochs and patience, never wall-clock time: the same command, seed and data give the same
model on the same machine. Optional: mixed precision (autocast; the weights and the export stay fp32)
and data parallelism over torchrun's processes (training/distributed.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset
from tqdm import tqdm

from models import build_model, config_from_dict
from training.config import TrainConfig
from training.distributed import SINGLE, Ranks, ShardedBatches, leader_says, mean_across
from training.tasks.base import Prepared, Task

log = logging.getLogger(__name__)


@dataclass
class Trained:
    model: nn.Module  # the best weights on validation, in eval mode
    model_config: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float
    pretraining: list[dict[str, float]]  # the self-supervised epochs, if any


# --precision: the autocast dtype (None: plain fp32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def pick_device(name: str, ranks: Ranks = SINGLE) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", ranks.local_rank)  # one GPU per process under torchrun
    return torch.device(name)


def make_loader(
    task: Task,
    dataset: TensorDataset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator,
    ranks: Ranks = SINGLE,
) -> DataLoader:
    """The task's batches (else plain ones, shuffled and whole when training); this rank's share of each."""
    batches = task.batches(dataset, batch_size, shuffle, generator)
    if batches is None:
        rows = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        batches = BatchSampler(rows, batch_size, drop_last=shuffle)
    if ranks.distributed:
        batches = ShardedBatches(batches, ranks)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=task.collate)


@dataclass
class Optimization:
    """AdamW with warm-up then cosine decay, and the gradient scaler fp16 needs (a no-op otherwise)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    @classmethod
    def create(cls, params: Any, cfg: TrainConfig, total_steps: int, device: torch.device) -> Optimization:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = min(cfg.warmup_steps, total_steps // 10)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total_steps))
        scaler = torch.amp.GradScaler(device.type, enabled=PRECISIONS[cfg.precision] is torch.float16)
        return cls(optimizer, scheduler, scaler)

    def step(self, loss: torch.Tensor, model: nn.Module) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()


def pretrain(
    task: Task,
    net: nn.Module,
    loader: DataLoader,
    steps_per_epoch: int,
    cfg: TrainConfig,
    ranks: Ranks,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    generator: torch.Generator,
) -> list[dict[str, float]]:
    """The task's self-supervised objective on the training inputs, for cfg.pretrain_epochs; trains `net` in place."""
    pretext = task.pretext(net)
    if pretext is None:
        raise ValueError(f"{task.name} has no self-supervised objective: drop --pretrain-epochs")
    pretext.to(device)
    # The classifier's head is unused here: DDP must be told, or it waits for its gradients forever.
    model = DistributedDataParallel(pretext, find_unused_parameters=True) if ranks.distributed else pretext
    epochs = 1 if cfg.dry_run else cfg.pretrain_epochs
    optimization = Optimization.create(pretext.parameters(), cfg, epochs * steps_per_epoch, device)
    history = []
    for epoch in range(epochs):
        model.train()
        running, seen = 0.0, 0
        for step, (*inputs, _labels) in enumerate(loader):
            if step == steps_per_epoch:
                break
            with autocast():
                loss = model(*[t.to(device) for t in inputs], generator=generator)
            optimization.step(loss, model)
            running, seen = running + loss.item(), seen + 1
        history.append({"epoch": epoch + 1, "pretrain_loss": mean_across(ranks, running / seen)})
        if ranks.leader:
            log.info("%s pretraining epoch %d: loss %.4f", task.name, epoch + 1, history[-1]["pretrain_loss"])
    return history


@torch.no_grad()
def validate(
    model: nn.Module,
    task: Task,
    loader: DataLoader,
    class_weights: torch.Tensor | None,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
) -> tuple[float, float | None]:
    """Mean loss, and the task's score over the whole validation set (e.g. macro-F1 is not a mean of batches).

    Every rank validates the whole set: it is a tenth of the data and forward only, and ranks that
    computed the same numbers cannot disagree about early stopping."""
    model.eval()
    total, all_outputs, all_targets = 0.0, [], []
    for *inputs, targets in loader:
        inputs, targets = [t.to(device) for t in inputs], targets.to(device)
        with autocast():
            outputs = model(*inputs).float()
            total += task.loss(outputs, targets, class_weights).item() * len(targets)
        all_outputs.append(outputs.cpu())
        all_targets.append(targets.cpu())
    targets = torch.cat(all_targets)
    return total / len(targets), task.score(torch.cat(all_outputs), targets)


def fit(
    task: Task,
    data: Prepared,
    cfg: TrainConfig,
    run_dir: Path,
    ranks: Ranks = SINGLE,
    on_epoch: Callable[[int, float], None] | None = None,
) -> Trained:
    """Train on every rank; `on_epoch(epoch, objective)` hears each epoch's validation objective (lower is
    better), e.g. an Optuna trial that may prune the run by raising."""
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device, ranks)
    model_config = dataclasses.asdict(config_from_dict(task.model, {**task.model_config(data), **cfg.model}))
    net = build_model(task.model, config_from_dict(task.model, model_config)).to(device)
    # Batch order is drawn alike on every rank (the global batches); augmentation differs per rank.
    generator = torch.Generator().manual_seed(cfg.seed)
    augmentation = torch.Generator().manual_seed(cfg.seed + 7919 * (ranks.rank + 1))
    train_loader = make_loader(task, data.train, cfg.batch_size, shuffle=True, generator=generator, ranks=ranks)
    val_loader = make_loader(task, data.val, 512, shuffle=False, generator=generator)
    class_weights = data.class_weights.to(device) if data.class_weights is not None else None
    epochs = 1 if cfg.dry_run else cfg.epochs
    steps_per_epoch = min(len(train_loader), 5) if cfg.dry_run else len(train_loader)
    total_steps = epochs * steps_per_epoch
    optimization = Optimization.create(net.parameters(), cfg, total_steps, device)
    optimizer, scheduler = optimization.optimizer, optimization.scheduler
    low_precision = PRECISIONS[cfg.precision]

    def autocast() -> AbstractContextManager:
        return torch.autocast(device.type, dtype=low_precision, enabled=low_precision is not None)

    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    start_epoch, best, stale, history, pretraining = 0, math.inf, 0, [], []
    if cfg.resume and last_path.exists():
        state = torch.load(last_path, weights_only=True, map_location=device)
        if state["model_config"] != model_config:
            raise ValueError(f"{last_path} was trained with another net config; remove it or drop --resume")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        augmentation.set_state(state["augmentation"])
        start_epoch, best, stale, history = state["epoch"] + 1, state["best"], state["stale"], state["history"]
        if ranks.leader:
            log.info("resumed from %s at epoch %d", last_path, start_epoch)
    elif cfg.pretrain_epochs > 0:
        pretraining = pretrain(task, net, train_loader, steps_per_epoch, cfg, ranks, device, autocast, augmentation)
    # DDP averages the gradients over ranks in backward(); the parameters start equal (rank 0's are broadcast).
    model = DistributedDataParallel(net) if ranks.distributed else net

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
            disable=None if ranks.leader else True,
        )  # disable=None: no bar in logs, only on a terminal
        for step, (*inputs, targets) in enumerate(bar):
            if step == steps_per_epoch:
                break
            inputs = [t.to(device) for t in task.augment(tuple(inputs), augmentation)]
            targets = targets.to(device)
            with autocast():
                outputs = model(*inputs).float()
                loss = task.loss(outputs, targets, class_weights)
            optimization.step(loss, model)
            running, seen = running + loss.item(), seen + 1
            if not bar.disable:
                score = task.score(outputs.detach().cpu(), targets.cpu())
                bar.set_postfix(
                    loss=f"{running / seen:.4f}", **({"score": f"{score:.3f}"} if score is not None else {})
                )

        val_loss, val_score = validate(net, task, val_loader, class_weights, device, autocast)
        record = {
            "epoch": epoch + 1,
            "train_loss": mean_across(ranks, running / seen),
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
        if ranks.leader:
            save_checkpoints(
                net,
                optimizer,
                scheduler,
                generator,
                augmentation,
                model_config,
                epoch,
                best,
                stale,
                history,
                last_path,
                best_path if improved else None,
            )
            log.info(
                "%s epoch %d: %s%s",
                task.name,
                epoch + 1,
                {k: round(v, 4) for k, v in record.items()},
                " (best)" if improved else "",
            )
        if on_epoch is not None:
            on_epoch(epoch + 1, objective)
        if leader_says(ranks, stale >= cfg.patience):
            if ranks.leader:
                log.info("early stop: no better validation result for %d epochs", stale)
            break

    seconds = time.monotonic() - started
    net.load_state_dict(torch.load(best_path, weights_only=True, map_location=device)["model"])
    net.cpu().eval()  # export and evaluation run on the CPU, in fp32
    return Trained(net, model_config, history, seconds, pretraining)


def save_checkpoints(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    augmentation: torch.Generator,
    model_config: dict[str, Any],
    epoch: int,
    best: float,
    stale: int,
    history: list[dict[str, float]],
    last_path: Path,
    best_path: Path | None,
) -> None:
    """last.pt resumes a run; best.pt (written when the epoch improved) holds the weights the road exports."""
    if best_path is not None:
        torch.save({"model": net.state_dict(), "model_config": model_config, "epoch": epoch}, best_path)
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "augmentation": augmentation.get_state(),
            "model_config": model_config,
            "epoch": epoch,
            "best": best,
            "stale": stale,
            "history": history,
        },
        last_path,
    )

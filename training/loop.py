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
        # A ragged last batch is dropped when training, unless it is the only one (a fine-tune's few examples).
        batches = BatchSampler(rows, batch_size, drop_last=shuffle and len(dataset) >= batch_size)
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
        betas = (cfg.adam_beta1, 0.999)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=betas)
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


@dataclass
class Progress:
    """Where a run stands after an epoch: what `last.pt` saves and `--resume` restores."""

    start_epoch: int = 0
    best: float = math.inf  # the best validation objective (lower is better)
    stale: int = 0  # epochs since it improved
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)

    def note(self, record: dict[str, float], by_validation: bool = True) -> tuple[float, bool]:
        """Add an epoch's record; its objective (lower is better) and whether it is the best yet.

        Classifiers are judged on their validation score: with label smoothing the loss rises as answers
        grow confident while accuracy still improves. Not `by_validation`: every epoch is the best yet (the
        schedule ends the run and its last epoch is kept)."""
        self.history.append(record)
        objective = -record["val_score"] if "val_score" in record else record["val_loss"]
        improved = objective < self.best or not by_validation
        self.best, self.stale = (objective, 0) if improved else (self.best, self.stale + 1)
        return objective, improved


def resumed(
    path: Path,
    net: nn.Module,
    optimization: Optimization,
    generators: tuple[torch.Generator, torch.Generator],
    model_config: dict[str, Any],
    device: torch.device,
) -> Progress:
    """Weights, optimizer, schedule and random states from `last.pt`, and where the run stood."""
    state = torch.load(path, weights_only=True, map_location=device)
    if state["model_config"] != model_config:
        raise ValueError(f"{path} was trained with another net config; remove it or drop --resume")
    net.load_state_dict(state["model"])
    optimization.optimizer.load_state_dict(state["optimizer"])
    optimization.scheduler.load_state_dict(state["scheduler"])
    generators[0].set_state(state["generator"])
    generators[1].set_state(state["augmentation"])
    return Progress(state["epoch"] + 1, state["best"], state["stale"], state["history"])


def loaders(
    task: Task, data: Prepared, cfg: TrainConfig, generator: torch.Generator, ranks: Ranks
) -> tuple[DataLoader, DataLoader, int, int]:
    """The training and validation batches, the epochs and the steps per epoch (a few, for --dry-run)."""
    train = make_loader(task, data.train, cfg.batch_size, shuffle=True, generator=generator, ranks=ranks)
    val = make_loader(task, data.val, 512, shuffle=False, generator=generator)
    return train, val, 1 if cfg.dry_run else cfg.epochs, min(len(train), 5) if cfg.dry_run else len(train)


def autocast_for(device: torch.device, precision: str) -> Callable[[], AbstractContextManager]:
    """--precision's autocast context (a no-op for fp32): the weights and the export stay fp32."""
    low_precision = PRECISIONS[precision]
    return lambda: torch.autocast(device.type, dtype=low_precision, enabled=low_precision is not None)


def progress_bar(loader: DataLoader, steps: int, desc: str, ranks: Ranks) -> tqdm:
    # disable=None: no bar in logs, only on a terminal; and only the leader's.
    return tqdm(loader, total=steps, desc=desc, leave=False, mininterval=1.0, disable=None if ranks.leader else True)


def train_epoch(
    model: nn.Module,
    task: Task,
    bar: tqdm,
    steps: int,
    optimization: Optimization,
    autocast: Callable[[], AbstractContextManager],
    augmentation: torch.Generator,
    class_weights: torch.Tensor | None,
    device: torch.device,
    epoch: int,
) -> float:
    """`steps` optimizer steps over the batches `bar` yields (epoch `epoch`, from 0); the mean training loss."""
    task.begin_epoch(model, epoch)
    running, seen = 0.0, 0
    for step, (*inputs, targets) in enumerate(bar):
        if step == steps:
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
            bar.set_postfix(loss=f"{running / seen:.4f}", **({"score": f"{score:.3f}"} if score is not None else {}))
    return running / seen


def net_config(task: Task, data: Prepared, cfg: TrainConfig) -> dict[str, Any]:
    """The net's config: the task's for its data, then the run's overrides."""
    return dataclasses.asdict(config_from_dict(task.model, {**task.model_config(data), **cfg.model}))


def fit(
    task: Task,
    data: Prepared,
    cfg: TrainConfig,
    run_dir: Path,
    ranks: Ranks = SINGLE,
    on_epoch: Callable[[dict[str, float], float], None] | None = None,
) -> Trained:
    """Train on every rank; `on_epoch(record, objective)` hears each epoch's record (its number, losses and
    validation score) and validation objective (lower is better): an Optuna trial may prune the run by raising,
    the progress record counts epochs."""
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device, ranks)
    model_config = net_config(task, data, cfg)
    net = task.initialize(build_model(task.model, config_from_dict(task.model, model_config))).to(device)
    # Batch order is drawn alike on every rank (the global batches); augmentation differs per rank.
    generator = torch.Generator().manual_seed(cfg.seed)
    augmentation = torch.Generator().manual_seed(cfg.seed + 7919 * (ranks.rank + 1))
    train_loader, val_loader, epochs, steps_per_epoch = loaders(task, data, cfg, generator, ranks)
    class_weights = data.class_weights.to(device) if data.class_weights is not None else None
    optimization = Optimization.create(task.parameter_groups(net, cfg), cfg, epochs * steps_per_epoch, device)
    autocast = autocast_for(device, cfg.precision)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    progress, pretraining = Progress(), []
    if cfg.resume and last_path.exists():
        progress = resumed(last_path, net, optimization, (generator, augmentation), model_config, device)
        if ranks.leader:
            log.info("resumed from %s at epoch %d", last_path, progress.start_epoch)
    elif cfg.pretrain_epochs > 0:
        pretraining = pretrain(task, net, train_loader, steps_per_epoch, cfg, ranks, device, autocast, augmentation)
    # DDP averages the gradients over ranks in backward(); the parameters start equal (rank 0's are broadcast).
    model = DistributedDataParallel(net) if ranks.distributed else net

    started = time.monotonic()
    for epoch in range(progress.start_epoch, epochs):
        bar = progress_bar(train_loader, steps_per_epoch, f"{task.name} epoch {epoch + 1}/{epochs}", ranks)
        train_loss = train_epoch(
            model, task, bar, steps_per_epoch, optimization, autocast, augmentation, class_weights, device, epoch
        )
        val_loss, val_score = validate(net, task, val_loader, class_weights, device, autocast)
        record = {
            "epoch": epoch + 1,
            "train_loss": mean_across(ranks, train_loss),
            "val_loss": val_loss,
            "lr": optimization.scheduler.get_last_lr()[0],
            **({"val_score": val_score} if val_score is not None else {}),
        }
        objective, improved = progress.note(record, task.selects_by_validation)
        if ranks.leader:
            save_checkpoints(
                net, optimization, (generator, augmentation), model_config, epoch, progress, last_path, improved
            )
            log_epoch(
                task.name, record, improved, (time.monotonic() - started) / (epoch + 1 - progress.start_epoch), epochs
            )
        if on_epoch is not None:
            on_epoch(record, objective)
        if leader_says(ranks, progress.stale >= cfg.patience):
            if ranks.leader:
                log.info("early stop: no better validation result for %d epochs", progress.stale)
            break

    net.load_state_dict(torch.load(best_path, weights_only=True, map_location=device)["model"])
    net.cpu().eval()  # export and evaluation run on the CPU, in fp32
    return Trained(net, model_config, progress.history, time.monotonic() - started, pretraining)


def log_epoch(name: str, record: dict[str, float], improved: bool, epoch_seconds: float, epochs: int) -> None:
    """One line an epoch: its record, whether it is the best yet, and how long the rest takes at most (early
    stopping may end the run sooner)."""
    rounded = {k: round(v, 4) for k, v in record.items()}
    left = epoch_seconds * (epochs - record["epoch"])
    best = " (best)" if improved else ""
    log.info("%s epoch %d of %d: %s%s, at most %.0f s left", name, record["epoch"], epochs, rounded, best, left)


def save_checkpoints(
    net: nn.Module,
    optimization: Optimization,
    generators: tuple[torch.Generator, torch.Generator],
    model_config: dict[str, Any],
    epoch: int,
    progress: Progress,
    last_path: Path,
    improved: bool,
) -> None:
    """last.pt resumes a run; best.pt (written when the epoch improved) holds the weights the road exports."""
    if improved:
        best_path = last_path.with_name("best.pt")
        torch.save({"model": net.state_dict(), "model_config": model_config, "epoch": epoch}, best_path)
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": optimization.optimizer.state_dict(),
            "scheduler": optimization.scheduler.state_dict(),
            "generator": generators[0].get_state(),
            "augmentation": generators[1].get_state(),
            "model_config": model_config,
            "epoch": epoch,
            "best": progress.best,
            "stale": progress.stale,
            "history": progress.history,
        },
        last_path,
    )

"""Hyperparameter search with Optuna: `python -m training tune TASK --trials N [--timeout S]`.

Each task declares its search space beside its defaults (`Task.search_space`). A trial trains with the
road's own loop and is judged on the validation split, as the loop judges epochs (test data stays unseen);
nothing is exported or registered. Optuna's median pruner stops a trial whose per-epoch validation
objective trails the earlier trials' at the same epoch (after 3 whole trials, and not in
the first quarter of its epochs). The study is an SQLite file,
`<out-dir>/tune/<task>.db`: run the command again to add trials to it. Then
`python -m training train TASK --params-from <out-dir>/tune/<task>.db` trains with the best trial's
parameters and records the search in the model card.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from optuna.visualization import matplotlib as optuna_plots

from training.config import TrainConfig
from training.loop import fit
from training.tasks import get_task

log = logging.getLogger(__name__)


def study_path(cfg: TrainConfig) -> Path:
    return Path(cfg.out_dir) / "tune" / f"{cfg.task}.db"


def load_study(path: Path, task: str) -> optuna.Study:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no study there; run `python -m training tune {task}` first")
    return optuna.load_study(study_name=task, storage=f"sqlite:///{path}")


def study_record(path: Path, study: optuna.Study) -> dict[str, Any]:
    """What the model card keeps of a search: where it is, the best trial and every trial's outcome."""
    return {
        "study": str(path),
        "best_trial": study.best_trial.number,
        "best_value": study.best_value,
        "best_params": study.best_params,
        "trials": [
            {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params} for t in study.trials
        ],
    }


def best_params(path: Path, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The best trial's parameters, and the study's record for the card."""
    study = load_study(path, task)
    return study.best_params, study_record(path, study)


def tune(base: TrainConfig, trials: int, timeout: float | None) -> optuna.Study:
    """Add `trials` trials (fewer if `timeout` seconds pass first) to the task's study; returns the study."""
    task = get_task(base.task)
    base = dataclasses.replace(base, register=False, resume=False)
    path = study_path(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=task.name,
        storage=f"sqlite:///{path}",
        load_if_exists=True,
        direction="minimize",  # the loop's objective: -validation score, else validation loss
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        # No pruning in a trial's first quarter of epochs: early epochs say little about the end.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, base.epochs // 4)),
    )
    data = task.load_data(base)  # the search space holds training choices only: the data stay the same

    def objective(trial: optuna.Trial) -> float:
        task.search_space(trial)
        cfg = base.with_params(trial.params)
        run_dir = path.parent / task.name / f"trial-{trial.number}"
        run_dir.mkdir(parents=True, exist_ok=True)

        def report(record: dict[str, float], value: float) -> None:
            epoch = int(record["epoch"])
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {value:.4f} trails the median")

        trained = fit(task, data, cfg, run_dir, on_epoch=report)
        return min(-h["val_score"] if "val_score" in h else h["val_loss"] for h in trained.history)

    study.optimize(objective, n_trials=trials, timeout=timeout)
    plot_study(study, path.with_suffix(""))
    log.info(
        "%s: best of %d trials is #%d, objective %.4f, %s; train with --params-from %s",
        task.name,
        len(study.trials),
        study.best_trial.number,
        study.best_value,
        study.best_params,
        path,
    )
    return study


def plot_study(study: optuna.Study, stem: Path) -> list[Path]:
    """<stem>-history.png (objective by trial), and <stem>-importances.png once two trials have completed."""
    plots = {"history": optuna_plots.plot_optimization_history}
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(completed) >= 2:
        plots["importances"] = optuna_plots.plot_param_importances
    written = []
    for name, plot in plots.items():
        axes = plot(study)
        path = Path(f"{stem}-{name}.png")
        axes.figure.tight_layout()
        axes.figure.savefig(path, dpi=100)
        plt.close(axes.figure)
        written.append(path)
    return written

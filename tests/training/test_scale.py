"""Training at scale: reproducible runs, Optuna tuning, data parallelism over processes, mixed precision,
masked-language-model pretraining, and the results report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from training.__main__ import main
from training.config import TrainConfig
from training.distributed import Ranks, ShardedBatches
from training.loop import fit
from training.tasks.series import ForecastTask
from training.tasks.text import TextClassificationTask, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def card_of(out_dir: Path, task: str) -> dict:
    return json.loads((out_dir / task / "card.json").read_text())


def run_training(argv: list[str], store: Path | None = None, processes: int = 1) -> None:
    """python -m training, or torchrun with `processes` ranks, in a subprocess (with its own model store)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"BENTOML_HOME": str(store)} if store else {})}
    launcher = ["-m", "torch.distributed.run", f"--nproc-per-node={processes}"] if processes > 1 else []
    done = subprocess.run(
        [sys.executable, *launcher, "-m", "training", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_sharded_batches_split_every_global_batch_between_ranks():
    batches = [[0, 1, 2, 3, 4], [5, 6, 7, 8], [9]]  # the last is too short for two ranks
    shares = [list(ShardedBatches(batches, Ranks(rank, 2))) for rank in (0, 1)]
    assert shares == [[[0, 2, 4], [5, 7]], [[1, 3], [6, 8]]]
    # Together the ranks see each row of the kept batches once, in the same number of steps.
    assert sorted(i for share in shares for batch in share for i in batch) == list(range(9))


def test_the_tokenizer_is_the_same_for_the_same_texts():
    texts = ["a small carnivorous mammal", "a tall perennial woody plant", "an act of kindness"] * 50
    first, second = train_tokenizer(texts, 300), train_tokenizer(texts, 300)
    assert first.to_str() == second.to_str()
    assert first.token_to_id("[PAD]") == 0 and first.token_to_id("[MASK]") == 2


@pytest.mark.slow
def test_the_same_dry_run_twice_gives_the_same_test_metrics(tmp_path):
    for run in ("a", "b"):
        argv = ["train", "wordnet-transformer", "--dry-run", "--no-register", "--out-dir", str(tmp_path / run)]
        assert main(argv) == 0
    first, second = card_of(tmp_path / "a", "wordnet-transformer"), card_of(tmp_path / "b", "wordnet-transformer")
    assert first["metrics"] == second["metrics"] and first["history"] == second["history"]
    assert first["baseline"] == second["baseline"]


def test_on_epoch_hears_the_validation_objective_and_can_stop_the_run(tmp_path):
    task = ForecastTask("gru")
    cfg = TrainConfig(task=task.name, out_dir=str(tmp_path), epochs=3, patience=10, **{"batch_size": 32})
    cfg.run_dir().mkdir(parents=True)
    heard = []

    def prune_after_two(record: dict[str, float], objective: float) -> None:
        heard.append((record["epoch"], objective))
        if record["epoch"] == 2:
            raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        fit(task, task.load_data(cfg), cfg, cfg.run_dir(), on_epoch=prune_after_two)
    assert [epoch for epoch, _ in heard] == [1, 2] and all(math.isfinite(v) for _, v in heard)


@pytest.mark.slow
def test_tune_prunes_resumes_plots_and_trains_from_its_best_trial(tmp_path):
    out = ["--out-dir", str(tmp_path)]
    # Real epochs of the small CO2 task: the median pruner has earlier trials to compare with.
    assert main(["tune", "co2-gru", "--trials", "6", "--epochs", "4", *out]) == 0
    study_file = tmp_path / "tune" / "co2-gru.db"
    study = optuna.load_study(study_name="co2-gru", storage=f"sqlite:///{study_file}")
    states = [t.state for t in study.trials]
    assert len(states) == 6 and optuna.trial.TrialState.PRUNED in states
    assert (tmp_path / "tune" / "co2-gru-history.png").stat().st_size > 0
    assert (tmp_path / "tune" / "co2-gru-importances.png").stat().st_size > 0

    assert main(["tune", "co2-gru", "--trials", "1", "--dry-run", *out]) == 0  # the study grows: resumable
    assert len(optuna.load_study(study_name="co2-gru", storage=f"sqlite:///{study_file}").trials) == 7

    # In a process of its own: a second export of the same recurrent net in one process (the session's
    # co2-gru fixture) comes out with its time axis frozen (torch 2.13's exporter).
    run_training(["train", "co2-gru", "--dry-run", "--no-register", "--params-from", str(study_file), *out])
    card, best = card_of(tmp_path, "co2-gru"), study.best_params
    assert card["train_config"]["lr"] == best["lr"] and card["model_config"]["hidden"] == best["model.hidden"]
    assert card["tuning"]["best_params"] == best and len(card["tuning"]["trials"]) == 7


@pytest.mark.slow
def test_tune_dry_run_does_two_tiny_trials(tmp_path):
    assert main(["tune", "fashion-cnn", "--trials", "2", "--dry-run", "--out-dir", str(tmp_path)]) == 0
    study = optuna.load_study(study_name="fashion-cnn", storage=f"sqlite:///{tmp_path / 'tune' / 'fashion-cnn.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


@pytest.mark.slow
def test_two_processes_train_the_model_one_process_trains(tmp_path):
    # Dropout off: what remains between 1 and 2 processes is word dropout (each rank draws its own) and the
    # order of sums (each rank's weighted mean loss, then DDP's mean of gradients), which AdamW's steps carry
    # into the weights. Tolerance: validation loss within 0.1%, test accuracy within two points.
    store = tmp_path / "bentoml"
    argv = ["train", "wordnet-transformer", "--dry-run", "--threads", "1", "--model", '{"dropout": 0.0}']
    run_training([*argv, "--out-dir", str(tmp_path / "one")], store)
    run_training([*argv, "--out-dir", str(tmp_path / "two")], store, processes=2)

    one, two = card_of(tmp_path / "one", "wordnet-transformer"), card_of(tmp_path / "two", "wordnet-transformer")
    assert two["machine"]["processes"] == 2 and one["machine"]["processes"] == 1
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-3)
    assert abs(two["metrics"]["accuracy"] - one["metrics"]["accuracy"]) <= 0.02
    # Rank 0 alone registered: one version each (plus its int8 variant), not one per rank.
    versions = list((store / "models" / "wordnet-transformer").iterdir())
    assert len([v for v in versions if v.name != "latest"]) == 2


@pytest.mark.slow
def test_two_processes_resume_from_the_last_checkpoint(tmp_path):
    store, out = tmp_path / "bentoml", ["--out-dir", str(tmp_path / "run")]
    argv = ["train", "co2-lstm", "--epochs", "2", "--no-register", "--threads", "1", *out]
    run_training(argv, store, processes=2)
    first = card_of(tmp_path / "run", "co2-lstm")
    run_training([*argv[:2], "--epochs", "3", *argv[4:], "--resume"], store, processes=2)
    resumed = card_of(tmp_path / "run", "co2-lstm")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == first["history"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_exports_fp32_within_parity(tmp_path, precision):
    out = tmp_path / precision
    run_training(["train", "co2-gru", "--dry-run", "--no-register", "--precision", precision, "--out-dir", str(out)])
    card = card_of(out, "co2-gru")
    assert card["train_config"]["precision"] == precision
    assert card["parity_max_abs_diff"] <= 1e-4 and all(math.isfinite(h["train_loss"]) for h in card["history"])


def test_precision_is_checked_by_the_command_line():
    with pytest.raises(SystemExit):
        main(["train", "fashion-cnn", "--precision", "fp8"])


def test_masked_language_model_pretraining_moves_the_encoder_and_lowers_its_loss(tmp_path):
    task = TextClassificationTask()
    cfg = TrainConfig(task=task.name, dry_run=True, out_dir=str(tmp_path), pretrain_epochs=1, lr=3e-3)
    cfg.run_dir().mkdir(parents=True)
    data = task.load_data(cfg)
    trained = fit(task, data, cfg, cfg.run_dir())
    assert len(trained.pretraining) == 1 and math.isfinite(trained.pretraining[0]["pretrain_loss"])

    # The objective on its own: a few steps on one batch lower the loss of predicting hidden tokens.
    from models import build_model, config_from_dict

    net = build_model("transformer", config_from_dict("transformer", trained.model_config))
    pretext = task.pretext(net)
    ids, mask, _ = data.train.tensors
    optimizer = torch.optim.AdamW(pretext.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = pretext(ids[:64, :24], mask[:64, :24], generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8


def test_report_prints_a_table_per_model_with_baselines_and_the_machine(registered, capsys):
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    for card in (registered["fashion-cnn"], registered["wordnet-transformer"]):
        assert f"**{card['tag']}**" in out
    assert "| model | accuracy |" in out and "logistic_regression (baseline)" in out
    assert "wordnet-transformer-int8" in out and "Trained: 1 epoch;" in out and "cores" in out


def test_lanes_take_the_longest_tasks_first_onto_the_least_loaded_lane():
    from training.lanes import plan_lanes

    everything = ["fashion-cnn", "co2-lstm", "co2-gru", "wordnet-transformer"]
    assert plan_lanes(everything, 2) == [["wordnet-transformer"], ["fashion-cnn", "co2-gru", "co2-lstm"]]
    assert plan_lanes(["co2-gru"], 2) == [["co2-gru"]]


def test_a_task_that_needs_another_trains_after_it_in_its_lane():
    from training.lanes import plan_lanes

    everything = ["fashion-cnn", "co2-lstm", "co2-gru", "wordnet-transformer", "fashion-gan", "fashion-diffusion"]
    assert plan_lanes(everything, 2) == [
        ["wordnet-transformer"],
        ["fashion-cnn", "co2-gru", "co2-lstm", "fashion-diffusion", "fashion-gan"],  # the default generator first
    ]
    assert plan_lanes(["fashion-cnn", "fashion-diffusion"], 2) == [["fashion-cnn", "fashion-diffusion"]]
    assert plan_lanes(["co2-gru", "fashion-diffusion"], 2) == [["co2-gru"], ["fashion-diffusion"]]


@pytest.mark.slow
def test_ensure_trains_every_missing_task_in_two_lanes_then_nothing(tmp_path):
    store, argv = tmp_path / "bentoml", ["ensure", "--dry-run", "--out-dir", str(tmp_path / "run")]
    env = {**os.environ, "BENTOML_HOME": str(store)}
    first = subprocess.run([sys.executable, "-m", "training", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    lanes = "wordnet-transformer | fashion-cnn, co2-gru, co2-lstm, fashion-diffusion, fashion-gan"
    assert f"training in 2 lanes: {lanes}" in first.stderr
    names = {p.name for p in (store / "models").iterdir()}
    defaults = {"fashion-cnn", "co2-lstm", "co2-gru", "wordnet-transformer", "wordnet-transformer-int8"}
    assert defaults | {"fashion-diffusion", "fashion-gan"} <= names
    cards = [card_of(tmp_path / "run", task) for task in ("fashion-cnn", "wordnet-transformer")]
    assert all(card["machine"]["threads_per_process"] == max(1, (os.cpu_count() or 1) // 2) for card in cards)

    again = subprocess.run([sys.executable, "-m", "training", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "every default model is in the store" in again.stderr

import torch

from training.config import TrainConfig
from training.loop import fit, lr_factor
from training.tasks.images import ImageClassificationTask


def test_lr_warms_up_then_decays_to_zero():
    assert lr_factor(0, 10, 100) == 0.1
    assert lr_factor(9, 10, 100) == 1.0
    assert 0.45 < lr_factor(55, 10, 100) < 0.55
    assert lr_factor(100, 10, 100) == 0.0


def test_checkpoints_hold_tensors_and_plain_data_and_resume(tmp_path):
    task = ImageClassificationTask()
    cfg = TrainConfig(dry_run=True, out_dir=str(tmp_path), epochs=1)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True)
    data = task.load_data(cfg)
    trained = fit(task, data, cfg, run_dir)
    assert len(trained.history) == 1 and not trained.model.training

    # weights_only=True refuses anything but tensors and plain containers: no pickled modules.
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "model_config", "epoch", "best"} <= set(state)

    resumed = fit(task, data, TrainConfig(dry_run=True, out_dir=str(tmp_path), resume=True), run_dir)
    assert resumed.history == trained.history  # the one epoch was done: nothing left to train


def test_same_seed_same_weights(tmp_path):
    task = ImageClassificationTask()
    runs = []
    for name in ("a", "b"):
        cfg = TrainConfig(dry_run=True, out_dir=str(tmp_path / name))
        cfg.run_dir().mkdir(parents=True)
        runs.append(fit(task, task.load_data(cfg), cfg, cfg.run_dir()))
    for p, q in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        assert torch.equal(p, q)

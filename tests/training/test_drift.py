"""`python -m training drift`: logged inputs against the card's reference summaries (training/drift.py)."""

import json

import numpy as np

from training.__main__ import main


def write_log(folder, card, means, flagged):
    """Payload lines as services/ops/payloads.py writes them, for images whose normalized means are `means`."""
    model, version = card["tag"].split(":")
    folder.mkdir(parents=True, exist_ok=True)
    reference = card["reference"]
    rng = np.random.default_rng(1)
    with open(folder / "payloads-1.jsonl", "w") as f:
        for i, mean in enumerate(means):
            summary = {"size": 784, "mean": mean, "std": float(rng.choice(reference["std"]))}
            answer = {"label": "Bag", "probability": 0.9, "ood_score": 0.0, "in_distribution": i >= flagged}
            line = {"time": 0, "request_id": str(i), "model": model, "version": version, "input": summary}
            f.write(json.dumps(line | {"answer": answer}) + "\n")
        f.write('{"model": "cut off by a cra')  # a crash mid-line: counted, not fatal


def test_inputs_like_the_training_data_show_no_drift(cnn_card, tmp_path):
    means = np.random.default_rng(0).choice(cnn_card["reference"]["mean"], 400).tolist()
    write_log(tmp_path / "logs", cnn_card, means, flagged=4)  # 1% flagged: what the threshold expects
    assert main(["drift", str(tmp_path / "logs"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "no drift found" in report and "1 unreadable lines" in report
    assert "| mean |" in report and "| std |" in report and "4 of 400" in report


def test_brighter_inputs_and_many_ood_answers_are_reported_as_drift(cnn_card, tmp_path):
    means = (np.random.default_rng(0).choice(cnn_card["reference"]["mean"], 400) + 0.5).tolist()
    write_log(tmp_path / "logs", cnn_card, means, flagged=60)
    assert main(["drift", str(tmp_path / "logs"), "--out", str(tmp_path / "report")]) == 1
    report = (tmp_path / "report" / "report.md").read_text()
    (mean_row,) = [row for row in report.splitlines() if row.startswith("| mean |")]
    assert mean_row.endswith("| yes |")
    assert "60 of 400" in report and "more than expected" in report
    model, version = cnn_card["tag"].split(":")
    assert (tmp_path / "report" / f"{model}-{version}.png").stat().st_size > 10_000

"""The int8-vs-float benchmark runs on the stored models and reports both, the float model as the 1.0× base."""

import json

from bench.variants import main


def test_the_variant_benchmark_times_the_model_and_its_int8_form_side_by_side(registered, capsys):
    assert main(["--batch-sizes", "1", "4", "--calls", "10", "--rounds", "2", "--threads", "1"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [
        (registered[name]["tag"], batch)
        for batch in (1, 4)
        for name in ("wordnet-transformer", "wordnet-transformer-int8")
    ]
    assert all(r["median_ms"] > 0 for r in rows)
    assert [r["speedup"] for r in rows if r["model"] == registered["wordnet-transformer"]["tag"]] == [1.0, 1.0]
    assert rows[1]["macro_f1"] == round(registered["wordnet-transformer-int8"]["metrics"]["macro_f1"], 4)

"""The runner service's parts without a server: the wire format, batching of calls, checks of a call's arrays."""

import asyncio
import io
import pickle

import bentoml
import numpy as np
import pytest

from contracts.tensors import feeds_problem, zero_feeds
from services.runtime.remote import MAX_NPZ_BYTES, RemoteSession, decode_feeds, encode_feeds
from services.runtime.runner import OnnxRunner, padded_calls
from services.settings import ServeSettings


def test_arrays_cross_the_wire_unchanged():
    feeds = {"input_ids": np.arange(6, dtype=np.int64).reshape(2, 3), "attention_mask": np.ones((2, 3), np.int64)}
    decoded = decode_feeds(encode_feeds(feeds))
    assert decoded.keys() == feeds.keys() and all(
        np.array_equal(decoded[k], feeds[k]) and decoded[k].dtype == feeds[k].dtype for k in feeds
    )


@pytest.mark.parametrize(
    "body",
    [
        pickle.dumps({"pixels": [1.0]}),  # never unpickled
        np.zeros(3).tobytes(),  # raw bytes, not an .npz
        encode_feeds({"x": np.array([None], dtype=object)}),  # an object array inside an .npz
        encode_feeds({"x": np.zeros(3)})[:40],  # cut off
    ],
)
def test_anything_but_an_npz_of_plain_arrays_is_refused(body):
    with pytest.raises(ValueError, match=r"not an .npz archive"):
        decode_feeds(body)


def recorded_runner(tag: str, collate=None):
    """A runner service's runner (imported late: the module loads every registered model) that records its batches."""
    from services.runner_service import RUNNER_SETTINGS

    runner = OnnxRunner(bentoml.models.get(tag), RUNNER_SETTINGS, collate)
    batches: list[dict[str, tuple]] = []
    run = runner.run

    def recording(feeds):
        batches.append({name: array.shape for name, array in feeds.items()})
        return run(feeds)

    runner.run = recording
    return runner, batches


def test_an_npz_that_would_inflate_past_the_limit_is_refused_from_its_headers(monkeypatch):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, zeros=np.zeros(MAX_NPZ_BYTES // 8 + 1, np.float64))  # ~70 KB, 64 MiB inflated
    assert len(buffer.getvalue()) < 1_000_000

    def inflate(*args: object, **kwargs: object) -> None:
        raise AssertionError("the archive was opened for reading")

    monkeypatch.setattr(np, "load", inflate)
    with pytest.raises(ValueError, match="at most 16 arrays of 67108864 bytes"):
        decode_feeds(buffer.getvalue())
    many = io.BytesIO()
    np.savez(many, **{f"a{i}": np.zeros(1) for i in range(17)})
    with pytest.raises(ValueError, match="holds 17 arrays"):
        decode_feeds(many.getvalue())


def test_calls_of_one_shape_run_as_one_batch_and_each_gets_its_own_rows(registered):
    runner, batches = recorded_runner(registered["fashion-cnn"]["tag"])
    rng = np.random.default_rng(0)
    calls = [{"pixels": rng.random((n, 1, 28, 28), dtype=np.float32)} for n in (1, 3, 2)]
    outputs = runner.infer(calls)
    assert batches == [{"pixels": (6, 1, 28, 28)}]
    for call, output in zip(calls, outputs):
        alone = runner.session.run(call)
        assert output.keys() == alone.keys()
        for name in alone:
            np.testing.assert_allclose(output[name], alone[name], atol=1e-5)


def test_calls_of_other_lengths_run_apart_in_the_same_turn(registered):
    runner, batches = recorded_runner(registered["wordnet-transformer"]["tag"])
    calls = [
        {"input_ids": np.full((n, length), 5, np.int64), "attention_mask": np.ones((n, length), np.int64)}
        for n, length in ((2, 5), (1, 7), (1, 5))
    ]
    outputs = runner.infer(calls)
    assert sorted(b["input_ids"] for b in batches) == [(1, 7), (3, 5)]
    assert sorted(outputs[0]) == ["logits", "ood_score"]
    for name in outputs[0]:
        assert [len(o[name]) for o in outputs] == [2, 1, 1]
        np.testing.assert_allclose(outputs[1][name], runner.session.run(calls[1])[name], rtol=1e-5, atol=1e-5)


def test_the_texts_collate_pads_calls_of_other_lengths_into_one_batch_that_answers_as_each_alone(registered):
    runner, batches = recorded_runner(
        registered["wordnet-transformer"]["tag"], padded_calls({"input_ids": 0, "attention_mask": 0})
    )
    rng = np.random.default_rng(0)
    calls = [
        {"input_ids": rng.integers(1, 50, (n, length)), "attention_mask": np.ones((n, length), np.int64)}
        for n, length in ((2, 5), (1, 9), (1, 3))
    ]
    outputs = runner.infer(calls)
    assert batches == [{"input_ids": (4, 9), "attention_mask": (4, 9)}]
    for call, output in zip(calls, outputs):
        alone = runner.session.run(call)
        for name in ("logits", "ood_score"):  # padding changes neither the prediction nor the score
            np.testing.assert_allclose(output[name], alone[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "feeds,problem",
    [
        ({"pixels": np.zeros((2, 1, 28, 28), np.float32)}, None),
        ({"image": np.zeros((2, 1, 28, 28), np.float32)}, "the model's inputs are ['pixels']; got ['image']"),
        ({"pixels": np.zeros((2, 1, 28, 28), np.float64)}, "pixels must be FP32; got float64"),
        (
            {"pixels": np.zeros((2, 28, 28), np.float32)},
            "pixels must have shape [-1, 1, 28, 28] (-1: any length); got [2, 28, 28]",
        ),
        (
            {"pixels": np.zeros((2, 1, 28, 27), np.float32)},
            "pixels must have shape [-1, 1, 28, 28] (-1: any length); got [2, 1, 28, 27]",
        ),
        (
            {"pixels": np.zeros((0, 1, 28, 28), np.float32)},
            "every input must hold the same number of rows, at least one",
        ),
    ],
)
def test_a_calls_arrays_are_checked_against_the_models_inputs_before_they_join_a_batch(registered, feeds, problem):
    runner, _ = recorded_runner(registered["fashion-cnn"]["tag"])
    assert feeds_problem(runner.inputs, feeds) == problem
    warm = zero_feeds(runner.inputs)
    assert feeds_problem(runner.inputs, warm) is None and warm["pixels"].shape == (1, 1, 28, 28)


def test_a_worker_waits_for_its_runner_service_and_then_says_what_to_do(cnn_card):
    from harness.servers import free_port

    with pytest.raises(RuntimeError, match=r"not ready within 0.5 s .*MODELROAD_RUNNER_WAIT_S"):
        RemoteSession(f"http://127.0.0.1:{free_port()}", cnn_card["tag"], timeout_s=1, wait_s=0.5)


def test_the_runner_url_setting_decides_where_models_run(cnn_card, monkeypatch):
    settings = ServeSettings.from_env({"MODELROAD_RUNNER_URL": "http://runner:3000", "MODELROAD_RUNNER_WAIT_S": "0"})
    assert (settings.runner_url, settings.runner_wait_s) == ("http://runner:3000", 0.0)
    made = []
    monkeypatch.setattr("services.runtime.runner.RemoteSession", lambda *args: made.append(args) or object())
    OnnxRunner(bentoml.models.get(cnn_card["tag"]), settings)
    assert made == [("http://runner:3000", cnn_card["tag"], settings.request_timeout_s, 0.0)]


def test_a_classifiers_answer_arrays_are_derived_once_a_batch_and_the_protocol_gets_the_graphs_outputs_alone(
    registered,
):
    from services.dataplane.models import OnnxModel
    from services.families.image import ImageFamily

    family = ImageFamily(bentoml.models.get(registered["fashion-cnn"]["tag"]))
    derive, derived = family.runner.derive, []
    family.runner.derive = lambda outputs: derived.append(len(outputs["logits"])) or derive(outputs)
    rng = np.random.default_rng(0)
    calls = [{"pixels": rng.random((n, 1, 28, 28), dtype=np.float32)} for n in (1, 3, 2)]
    outputs = family.runner.infer(calls)
    assert derived == [6]  # one batch, derived once
    for output in outputs:
        graph = family.runner.graph_outputs(output)
        assert sorted(graph) == ["logits", "ood_score"] and len(output) > len(graph)
        # answers read from the batch's arrays are those computed from the call's own logits
        assert family.contract.answers(output, 0.5) == family.contract.answers(graph, 0.5)
    answered = asyncio.run(OnnxModel(family.runner).infer(calls[1]))
    assert sorted(answered) == ["logits", "ood_score"]
    family.runner.batcher.close()  # its thread

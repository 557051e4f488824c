"""Does fine-tuning transfer? A stored classifier fine-tuned (training/tasks/transfer.py) against the same net trained
from scratch for the same epochs on the same examples, against the same fine-tuning from a body of random weights
(what the parent's learned weights bring), and against a logistic regression on the parent's frozen features, on
data no model here was trained on:

- images: scikit-learn's handwritten digits (`load_digits`, 8x8, upscaled to the parent's size), k labelled
  images a class (a tenth of them the validation split), tested on every other digit image;
- texts: WordNet's verb glosses labelled by their 15 lexicographer files (motion, communication, ...); the
  project's text model learned noun glosses only: other words, other classes, the same dictionary's style.

Each row is the mean over several draws of the k examples. The wall time of a whole fine-tune (weights loaded,
trained, evaluated, exported, held to parity; not registered) on 500 examples is printed too.

    .venv/bin/python -m bench.transfer                                  # both families, 10 and 50 a class
    .venv/bin/python -m bench.transfer --family image --per-class 10 --draws 5 --unfreeze-after 10
    .venv/bin/python -m bench.transfer --served digits     # /classify_image with and without `model`
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

from bench.run import ROOT, family_requests, run_wrk
from bench.run import Request as BenchRequest
from contracts.preprocessing import ImagePreprocessing, TextPreprocessing
from harness.servers import free_port, serve_command, served
from services.settings import ServeSettings
from training.config import TrainConfig
from training.loop import fit
from training.pipeline import export
from training.tasks import TASKS
from training.tasks.base import Prepared, Task, fingerprint_arrays
from training.tasks.images import prepared_images
from training.tasks.text import WORDNET_NOUNS, prepared_texts
from training.tasks.transfer import FineTuning, Parent, Schedule, fine_tuning

WORDNET_VERBS = WORDNET_NOUNS.with_name("data.verb")
FIRST_VERB_FILE = 29  # lexicographer files 29-43 hold the verbs (WordNet's lexnames(5WN))
VERB_LEXNAMES = [
    "body",
    "change",
    "cognition",
    "communication",
    "competition",
    "consumption",
    "contact",
    "creation",
    "emotion",
    "motion",
    "perception",
    "possession",
    "social",
    "stative",
    "weather",
]
MAX_TEST = 3_000  # test examples a draw is scored on (every other digit; a draw of the 13,000 other verb glosses)
DEFAULT_PARENTS = {"image": "fashion-cnn:latest", "text": "wordnet-transformer:latest"}


@dataclass(frozen=True)
class Examples:
    """A labelled set none of the project's models trained on: each example's class id and the class names."""

    x: np.ndarray | list[str]
    y: np.ndarray
    labels: list[str]
    source: str


def digits(parent: Parent) -> Examples:
    """Every digit image at the parent's size: (N, 1, H, W) uint8, ink bright on black as in Fashion-MNIST."""
    prep = parent.card.preprocessing
    assert isinstance(prep, ImagePreprocessing)
    loaded = load_digits()
    images = (loaded.images * (255 / 16)).round().astype(np.uint8)
    size = (prep.width, prep.height)
    resized = [np.asarray(Image.fromarray(i).resize(size, Image.Resampling.BILINEAR)) for i in images]
    return Examples(np.stack(resized)[:, None], loaded.target.astype(np.int64), [str(d) for d in range(10)], "digits")


def verb_glosses(parent: Parent) -> Examples:
    """WordNet's verb glosses and their lexicographer file (Debian wordnet-base), each gloss once."""
    texts, targets, seen = [], [], set()
    for line in WORDNET_VERBS.read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):  # the licence header
            continue
        fields, _, gloss = line.partition(" | ")
        gloss = gloss.strip()
        if gloss and gloss not in seen:
            seen.add(gloss)
            texts.append(gloss)
            targets.append(int(fields.split()[1]) - FIRST_VERB_FILE)
    return Examples(texts, np.asarray(targets, dtype=np.int64), VERB_LEXNAMES, str(WORDNET_VERBS))


def drawn(examples: Examples, per_class: int, draw: int, val_fraction: float = 0.1) -> tuple[np.ndarray, ...]:
    """Train, validation and test indices: `per_class` a class (their validation share included), and up to
    MAX_TEST of the other examples, drawn, as the test set."""
    rng = np.random.default_rng(draw)
    train, val = [], []
    for class_id in range(len(examples.labels)):
        chosen = rng.permutation(np.flatnonzero(examples.y == class_id))[:per_class]
        n_val = max(1, round(per_class * val_fraction))
        val += chosen[:n_val].tolist()
        train += chosen[n_val:].tolist()
    rest = np.setdiff1d(np.arange(len(examples.y)), train + val)
    test = np.sort(rng.permutation(rest)[:MAX_TEST])
    return np.asarray(train), np.asarray(val), test


def prepared(task: FineTuning, examples: Examples, splits: tuple[np.ndarray, ...]) -> Prepared:
    """The draw as the fine-tuning task's own loader would prepare it (the parent's preprocessing)."""
    prep = task.parent.card.preprocessing
    if isinstance(prep, TextPreprocessing):
        texts = list(examples.x)
        tokenizer = task.parent.folder / prep.tokenizer
        return prepared_texts(texts, examples.y, examples.labels, splits, tokenizer, prep.text, examples.source)
    assert isinstance(prep, ImagePreprocessing) and isinstance(examples.x, np.ndarray)
    x, y = examples.x, examples.y
    fingerprint = fingerprint_arrays(x, y)
    return prepared_images(tuple((x[i], y[i]) for i in splits), examples.labels, prep, examples.source, fingerprint)


def scratch_task(parent: Parent) -> Task:
    """A fresh copy of the task that trained the parent's kind of net: the control, trained from the seed (images
    unmirrored, as fine-tuning's)."""
    own = next(t for t in TASKS.values() if (t.kind, t.model) == (parent.card.task, parent.card.family))
    task = type(own)()
    task.mirror = False  # type: ignore[attr-defined]
    return task


def accuracy(task: Task, net: torch.nn.Module, data: Prepared) -> float:
    with tempfile.TemporaryDirectory() as out:
        return float(task.evaluate(lambda *inputs: net(*inputs).detach().numpy(), data, Path(out))["accuracy"])


@dataclass(frozen=True)
class Row:
    per_class: int
    finetuned: float
    scratch: float  # the same net trained whole from the seed
    random_body: float  # the fine-tuning road from a body of random weights: what the parent's weights bring
    frozen_features: float  # a logistic regression on the parent's frozen features
    test_examples: int


def random_parent(parent: Parent, seed: int) -> Parent:
    """`parent` with weights drawn as a fresh net's (seeded): the control for what its learned weights bring."""
    torch.manual_seed(seed)
    return dataclasses.replace(parent, weights=parent.net(len(parent.card.labels)).state_dict())


def compare(parent: Parent, examples: Examples, per_class: int, draw: int, cfg: TrainConfig, schedule: Schedule) -> Row:
    """One draw: the fine-tuned model, the same net from scratch (same epochs, settings and augmentation) and the
    logistic regression on the parent's frozen features, on one test set."""
    task = fine_tuning("bench-finetuned", parent, schedule)
    assert isinstance(task, FineTuning)
    scratch = scratch_task(parent)
    architecture = {k: v for k, v in parent.card.model_config.items() if k not in ("num_classes", "vocab_size")}
    random_body = fine_tuning("bench-random-body", random_parent(parent, draw), schedule)
    with tempfile.TemporaryDirectory() as out:
        data = prepared(task, examples, drawn(examples, per_class, draw))
        nets = {
            task: fit(task, data, cfg, Path(out)).model,
            scratch: fit(scratch, data, dataclasses.replace(cfg, model=architecture), Path(out)).model,
            random_body: fit(random_body, data, cfg, Path(out)).model,
        }
        baseline = task.baseline(data)["frozen_features_logistic_regression"]["accuracy"]
    with torch.no_grad():
        scores = [accuracy(trained_by, net.eval(), data) for trained_by, net in nets.items()]
    return Row(per_class, *scores, baseline, len(data.test))


def timed_fine_tune(parent: Parent, examples: Examples, n: int, cfg: TrainConfig, schedule: Schedule) -> float:
    """Seconds for a whole fine-tune on `n` examples (evenly from the classes): weights loaded, trained with its
    defaults, evaluated against its baselines, exported and held to parity (what `finetune` does but register)."""
    start = time.perf_counter()
    task = fine_tuning("bench-finetuned", Parent.load(parent.tag), schedule)
    with tempfile.TemporaryDirectory() as out:
        train, val, test = drawn(examples, max(3, n // len(examples.labels)), 0, val_fraction=0.2)
        test = np.random.default_rng(0).permutation(test)[: max(len(examples.labels), n // 5)]
        data = prepared(task, examples, (train, val, test))
        trained = fit(task, data, cfg, Path(out))
        task.evaluate(lambda *inputs: trained.model(*inputs).detach().numpy(), data, Path(out))
        task.baseline(data)
        export(task, trained, data, Path(out))
    return time.perf_counter() - start


def with_model(request: BenchRequest, model: str) -> BenchRequest:
    """The same multipart upload with the text field `model` before its closing boundary."""
    boundary = request.content_type.split("boundary=")[1]
    field = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode()
    end = f"--{boundary}--\r\n".encode()
    return dataclasses.replace(request, body=request.body.removesuffix(end) + field + end)


def served_rps(model: str, connections: int, seconds: int, rounds: int) -> dict[str, float]:
    """/classify_image requests/s at `connections` in flight, on one server (1 worker) serving `model` beside the
    family's: the family's model without the field and named by it (what the field costs), and `model` (what the
    other model costs), rounds alternating in a rotating order; medians."""
    plain, default = family_requests()["image"], ServeSettings().image_model.split(":")[0]
    requests = {
        "the family's model, no field": plain,
        f"model={default} (the same model, named)": with_model(plain, default),
        f"model={model}": with_model(plain, model),
    }
    rates: dict[str, list[float]] = {name: [] for name in requests}
    port = free_port()
    env = {"MODELROAD_MODELS": f"{model}:latest", "MODELROAD_WORKERS": "1", "MODELROAD_GRPC_PORT": "0"}
    with (
        tempfile.TemporaryDirectory() as scratch,
        served(serve_command(port), port, env, Path(scratch) / "server.log", ROOT) as url,
    ):
        for request in requests.values():
            run_wrk(url, request, connections, 1, Path(scratch))  # warm-up
        for number in range(rounds):  # each round in another order: no request always goes first
            turn = number % len(requests)
            for name, request in [*requests.items()][turn:] + [*requests.items()][:turn]:
                rate, _, errors = run_wrk(url, request, connections, seconds, Path(scratch))
                if errors:
                    raise RuntimeError(f"{errors} answers not 2xx for {name}")
                rates[name].append(rate)
    return {name: float(np.median(values)) for name, values in rates.items()}


FIGURES = ("finetuned", "scratch", "random_body", "frozen_features")
READERS: dict[str, Callable[[Parent], Examples]] = {"image": digits, "text": verb_glosses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__)
    parser.add_argument("--family", choices=sorted(READERS), nargs="+", default=sorted(READERS))
    parser.add_argument("--image-parent", default=DEFAULT_PARENTS["image"], help="a stored image classifier")
    parser.add_argument("--text-parent", default=DEFAULT_PARENTS["text"], help="a stored text classifier")
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--draws", type=int, default=3, help="draws of the labelled examples per size")
    parser.add_argument("--epochs", type=int, default=FineTuning.train_defaults["epochs"])
    parser.add_argument("--unfreeze-after", type=int, default=None)
    parser.add_argument("--thaw-blocks", type=int, default=1)
    parser.add_argument("--freeze-norms", action="store_true", help="the body's norm layers frozen too")
    parser.add_argument("--timed", type=int, default=500, help="examples in the timed fine-tune (0: none)")
    parser.add_argument(
        "--served",
        metavar="MODEL",
        help="instead: /classify_image requests/s at c=32 with and without `model` naming this stored fine-tune",
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.served:
        rates = served_rps(args.served, 32, args.seconds, args.rounds)
        print(f"/classify_image at c=32, 1 worker, median of {args.rounds} rounds of {args.seconds} s, in turns:")
        for name, rate in rates.items():
            print(f"| {name} | {rate:.0f} requests/s |")
        return 0
    schedule = Schedule(args.unfreeze_after, args.thaw_blocks, train_norms=not args.freeze_norms)
    # Every epoch runs (the best on validation is kept), so that both nets train as long.
    cfg = TrainConfig(task="bench-finetuned", register=False, **FineTuning.train_defaults)
    cfg = dataclasses.replace(cfg, epochs=args.epochs, patience=args.epochs)
    for family in args.family:
        parent = Parent.load(getattr(args, f"{family}_parent"))
        examples = READERS[family](parent)
        print(f"\n{family}: from {parent.tag}, {args.epochs} epochs each, schedule {schedule.describe()}")
        print(
            "| labelled a class | fine-tuned | from scratch (fine-tuned - scratch: each draw) | from a random body "
            "| frozen features + LR | draws | test examples |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for per_class in args.per_class:
            rows = [compare(parent, examples, per_class, draw, cfg, schedule) for draw in range(args.draws)]
            tuned, scratch, random_body, frozen = (np.mean([getattr(r, f) for r in rows]) for f in FIGURES)
            each = ", ".join(f"{r.finetuned - r.scratch:+.3f}" for r in rows)
            print(
                f"| {per_class} | {tuned:.3f} | {scratch:.3f} ({tuned - scratch:+.3f}: {each}) | {random_body:.3f} "
                f"| {frozen:.3f} | {len(rows)} | {rows[0].test_examples} |"
            )
        if args.timed:
            defaults = TrainConfig(task="bench-finetuned", register=False, **FineTuning.train_defaults)
            seconds = timed_fine_tune(parent, examples, args.timed, defaults, schedule)
            print(f"a whole fine-tune of {args.timed} {family} examples: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

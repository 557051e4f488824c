"""Text classification: WordNet 3.0 noun glosses (Debian wordnet-base) labelled with their
lexicographer file (25 categories: animal, food, person, ...), or a user's CSV (text, label)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from onnxruntime.quantization import QuantType, quantize_dynamic
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch import nn
from torch.utils.data import Sampler, TensorDataset, default_collate

from contracts.answers import softmax
from contracts.preprocessing import TextEncoding, TextPreprocessing
from contracts.summaries import REFERENCE_ITEMS, text_summaries
from contracts.tensors import TensorSpec
from models.ood import Mahalanobis, Scored, TokenSurprise, embedded, features_of, inputs_of
from models.transformer import MaskedLanguageModel
from training.config import TrainConfig
from training.evaluate import classification_metrics, plot_confusion_matrix
from training.ood_sets import text_sets
from training.tasks.base import (
    FIT_ROWS,
    Predict,
    Prepared,
    Task,
    balanced_class_weights,
    fingerprint_arrays,
    register_task,
)
from training.tasks.transfer import (
    DataRefused,
    FineTuning,
    check_counts,
    held_out_split,
    read_class_folder,
    register_fine_tuning,
)

if TYPE_CHECKING:
    import optuna

WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")  # Debian package wordnet-base
# Lexicographer files 03-28 hold the nouns (WordNet's lexnames(5WN)); "noun." is dropped from the names.
NOUN_LEXNAMES = [
    "Tops",
    "act",
    "animal",
    "artifact",
    "attribute",
    "body",
    "cognition",
    "communication",
    "event",
    "feeling",
    "food",
    "group",
    "location",
    "motive",
    "object",
    "person",
    "phenomenon",
    "plant",
    "possession",
    "process",
    "quantity",
    "relation",
    "shape",
    "state",
    "substance",
    "time",
]
FIRST_NOUN_FILE = 3
# [PAD] is id 0: TextEncoding.pad_id and the embedding's padding_idx; [MASK] serves pretraining only.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[MASK]"]


def read_wordnet_glosses(path: Path) -> pd.DataFrame:
    """One row per noun synset: its gloss (the text after " | ") and its category name."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            fields, _, gloss = line.partition(" | ")
            lexfile = int(fields.split()[1])
            rows.append((gloss.strip(), NOUN_LEXNAMES[lexfile - FIRST_NOUN_FILE]))
    return pd.DataFrame(rows, columns=["text", "label"])


def read_labelled_texts(path: Path) -> pd.DataFrame:
    """A user's texts and labels: a CSV with `text` and `label` columns, or a folder with a subfolder of `.txt`
    files per class (one text a file). Hidden files are skipped; any other file that is not UTF-8 text refuses it."""
    if path.is_file():
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DataRefused(f"{path} is not a CSV of UTF-8 text: {str(exc).splitlines()[0]}") from None
        if not {"text", "label"} <= set(frame.columns):
            raise DataRefused(f"{path}: needs the columns text and label; found {list(frame.columns)}")
        return frame[["text", "label"]]
    texts, targets, classes = read_class_folder(path, read_text, "UTF-8 .txt files")
    return pd.DataFrame({"text": texts, "label": [classes[i] for i in targets]})


def read_text(path: Path) -> str:
    if path.suffix.lower() != ".txt":
        raise ValueError(f"{path.name}: not a .txt file")
    return path.read_text(encoding="utf-8").strip()


def load_texts(cfg: TrainConfig) -> pd.DataFrame:
    if cfg.data:
        frame = read_labelled_texts(Path(cfg.data))
    elif WORDNET_NOUNS.exists():
        frame = read_wordnet_glosses(WORDNET_NOUNS)
    else:
        raise FileNotFoundError(
            f"{WORDNET_NOUNS} not found: install the Debian package wordnet-base "
            "(apt-get install wordnet-base) or pass --data FILE.csv"
        )
    return distinct_texts(frame)


def distinct_texts(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with some text, each text once: the same text under two labels would be noise in every split (its
    first label is kept)."""
    return frame[frame["text"].str.strip() != ""].drop_duplicates("text").reset_index(drop=True)


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """WordPiece on the training split only, lower-cased with accents stripped, no special tokens added.

    The same texts give the same vocabulary: tokenizers' trainer numbers the "##x" pieces in hash-map
    order, and ties between merges go by those numbers, so two runs differ (huggingface/tokenizers#1794).
    Declaring every "##x" up front, in sorted order, fixes their numbers; the vocabulary is then loaded
    into a fresh tokenizer where they are ordinary pieces and only SPECIAL_TOKENS are special."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    characters = sorted({c for text in texts for c in normalizer.normalize_str(text) if not c.isspace()})
    trained = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trained.normalizer = normalizer
    trained.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + ["##" + c for c in characters]
    )
    trained.train_from_iterator(texts, trainer)
    tokenizer = Tokenizer(models.WordPiece(vocab=trained.get_vocab(), unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def tfidf_logistic_regression() -> Pipeline:
    """The classical model to beat."""
    return make_pipeline(
        TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2), LogisticRegression(max_iter=1000, C=10)
    )


class LengthBuckets(Sampler[list[int]]):
    """Batches of texts of similar length: shuffle, sort each pool of `pool` batches by length, cut,
    shuffle the batches. Glosses average 16 tokens but a random batch's longest averages 53."""

    def __init__(
        self, lengths: torch.Tensor, batch_size: int, shuffle: bool, generator: torch.Generator, pool: int = 50
    ):
        self.lengths, self.batch_size, self.shuffle, self.generator, self.pool = (
            lengths,
            batch_size,
            shuffle,
            generator,
            pool,
        )

    def _chunks(self, order: torch.Tensor) -> list[torch.Tensor]:
        return list(order.split(self.batch_size * self.pool))

    def __iter__(self):
        n = len(self.lengths)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        batches = []
        for chunk in self._chunks(order):
            batches += chunk[self.lengths[chunk].argsort(stable=True)].split(self.batch_size)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=self.generator)]
        return iter([batch.tolist() for batch in batches])

    def __len__(self) -> int:
        return sum(-(-len(chunk) // self.batch_size) for chunk in self._chunks(torch.arange(len(self.lengths))))


def prepared_texts(
    texts: list[str],
    y: np.ndarray,
    labels: list[str],
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    tokenizer_path: Path,
    encoding: TextEncoding,
    source: str,
) -> Prepared:
    """Texts tokenized by the tokenizer at `tokenizer_path` (stored with the model) into train, validation and test
    (`splits`: indices), with what the evaluation and the baseline read."""
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    train, val, test = splits

    def dataset(indices: np.ndarray) -> TensorDataset:
        ids, mask = encoding.pad(encoding.token_ids(tokenizer, [texts[i] for i in indices]))
        return TensorDataset(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(y[indices]))

    return Prepared(
        train=dataset(train),
        val=dataset(val),
        test=dataset(test),
        source=source,
        fingerprint=fingerprint_arrays(np.array(texts, dtype=object).astype(str), y),
        preprocessing=TextPreprocessing(encoding, "tokenizer.json"),
        labels=labels,
        files={"tokenizer.json": tokenizer_path},
        # Half-way to balanced (power 0.5): full balancing cost 3 points of accuracy and no macro-F1.
        class_weights=balanced_class_weights(y[train], len(labels), power=0.5),
        extras={
            "train_texts": [texts[i] for i in train],
            "train_labels": y[train],
            "test_texts": [texts[i] for i in test],
            "vocab_size": tokenizer.get_vocab_size(),
        },
    )


class TextClassificationTask(Task):
    name = "wordnet-transformer"
    model = "transformer"
    kind = "text-classification"
    inputs = (
        TensorSpec("input_ids", "INT64", ("batch", "tokens")),
        TensorSpec("attention_mask", "INT64", ("batch", "tokens")),
    )
    output_name = "logits"
    key_metric = "macro_f1"
    vocab_size = 12000
    max_tokens = 64  # 99.9% of WordNet glosses are shorter
    # Word dropout: the net learns not to lean on single rare words (its ablation: docs/training.md).
    token_dropout = 0.1
    train_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 11,
        "batch_size": 128,
        "lr": 2e-3,
        "weight_decay": 0.05,
        "patience": 3,
    }  # ~48 s an epoch on 2 cores
    expected_seconds = 630.0
    ood_recipe = (
        "Mahalanobis distance of the pooled states to the nearest class mean, plus the mean surprise of the "
        "tokens under the training split's token frequencies (each in validation standard deviations)"
    )

    def search_space(self, trial: optuna.Trial) -> None:
        trial.suggest_float("lr", 5e-4, 4e-3, log=True)
        trial.suggest_float("weight_decay", 0.01, 0.2, log=True)
        trial.suggest_float("model.dropout", 0.05, 0.3)
        trial.suggest_int("pretrain_epochs", 0, 4)

    def load_data(self, cfg: TrainConfig) -> Prepared:
        frame = load_texts(cfg)
        labels = sorted(frame["label"].unique())
        y = frame["label"].map({name: i for i, name in enumerate(labels)}).to_numpy(np.int64)
        texts = frame["text"].tolist()
        # Stratified 80/10/10: rare categories (motive, shape, ...) appear in every split.
        rest, test = train_test_split(np.arange(len(texts)), test_size=0.1, stratify=y, random_state=cfg.seed)
        train, val = train_test_split(rest, test_size=1 / 9, stratify=y[rest], random_state=cfg.seed)
        if cfg.dry_run:
            train, val, test = train[:2000], val[:300], test[:300]
        tokenizer = train_tokenizer([texts[i] for i in train], self.vocab_size)
        tokenizer_path = Path(cfg.run_dir()) / "tokenizer.json"
        tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(tokenizer_path))
        encoding = TextEncoding(max_tokens=self.max_tokens)
        source = str(cfg.data or WORDNET_NOUNS)
        return prepared_texts(texts, y, labels, (train, val, test), tokenizer_path, encoding, source)

    def example(self, data: Prepared) -> dict[str, Any]:
        return {"text": data.extras["test_texts"][0]}

    def model_config(self, data: Prepared) -> dict[str, Any]:
        return {"vocab_size": data.extras["vocab_size"], "num_classes": len(data.labels), "max_tokens": self.max_tokens}

    def augment(self, inputs: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        # Word dropout: a share of the real tokens read as [UNK], as unseen words do when serving.
        ids, mask = inputs
        dropped = (torch.rand(ids.shape, generator=generator) < self.token_dropout) & (mask == 1)
        return torch.where(dropped, SPECIAL_TOKENS.index("[UNK]"), ids), mask

    def pretext(self, net: nn.Module) -> nn.Module:
        return MaskedLanguageModel(net, mask_id=SPECIAL_TOKENS.index("[MASK]"), special_ids=len(SPECIAL_TOKENS))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, weight=class_weights, label_smoothing=0.05)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(f1_score(targets.numpy(), outputs.argmax(1).numpy(), average="macro", zero_division=0))

    def same_decisions(self, expected: np.ndarray, got: np.ndarray) -> bool:
        return bool((expected.argmax(-1) == got.argmax(-1)).all())

    def batches(self, dataset: TensorDataset, batch_size: int, shuffle: bool, generator: torch.Generator) -> Sampler:
        return LengthBuckets(dataset.tensors[1].sum(1), batch_size, shuffle, generator)

    def collate(self, rows: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        # Trim the batch to its longest member, as serving does: attention over padding is wasted work.
        ids, mask, y = default_collate(rows)
        longest = int(mask.sum(1).max())
        return ids[:, :longest], mask[:, :longest], y

    def export_inputs(self, data: Prepared) -> list[tuple[torch.Tensor, ...]]:
        ids, mask, _ = data.test.tensors

        def trimmed(rows: slice, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            length = length or int(mask[rows].sum(1).max())
            return ids[rows, :length], mask[rows, :length]

        # Parity at several batch sizes and lengths: with padding (mixed lengths), one token, the longest. A
        # fine-tune's test split may hold a few texts (at least two: the export's batch).
        n = len(ids)
        return [
            trimmed(slice(0, min(8, n))),
            trimmed(slice(n - 1, n)),
            (ids[:3, :1], torch.ones_like(ids[:3, :1])),
            (ids[:16], mask[:16]),
        ]

    def variants(self, onnx_path: Path, run_dir: Path) -> dict[str, Path]:
        # Dynamic int8 quantization of the weights (MatMul/Gemm); activations stay float and are quantized per call.
        quantized = run_dir / "model.int8.onnx"
        quantize_dynamic(str(onnx_path), str(quantized), weight_type=QuantType.QInt8)
        return {"int8": quantized}

    def ood_scorer(self, net: nn.Module, data: Prepared) -> Scored:
        # Mahalanobis on the features and token surprise on the inputs: together they separate the OOD sets better
        # than either alone or the other scores compared (docs/monitoring.md).
        ids, mask, classes = data.train.tensors
        features = embedded(net, self.input_batches(data.train, limit=FIT_ROWS))
        parts = {
            "mahalanobis": Mahalanobis.fit(features, classes[: len(features)]),
            "token_surprise": TokenSurprise.fit(ids, mask, net.config.vocab_size),
        }
        return Scored(net, parts, {"mahalanobis": features_of, "token_surprise": inputs_of})

    def ood_sets(self, data: Prepared) -> dict[str, list[tuple[torch.Tensor, ...]]]:
        tokenizer = Tokenizer.from_file(str(data.files["tokenizer.json"]))
        prep = data.preprocessing
        assert isinstance(prep, TextPreprocessing)
        encoding = prep.text

        def batches(texts: list[str]) -> list[tuple[torch.Tensor, ...]]:
            chunks = [texts[i : i + 256] for i in range(0, len(texts), 256)]
            padded = [encoding.pad(encoding.token_ids(tokenizer, chunk)) for chunk in chunks]
            return [(torch.from_numpy(ids), torch.from_numpy(mask)) for ids, mask in padded]

        return {name: batches(texts) for name, texts in text_sets(np.random.default_rng(0)).items()}

    def reference_summaries(self, data: Prepared) -> list[dict[str, Any]]:
        return text_summaries(data.extras["train_texts"][:REFERENCE_ITEMS])

    def ood_baseline(self, outputs: np.ndarray) -> np.ndarray:
        return 1.0 - softmax(outputs).max(1)

    def evaluate(self, predict: Predict, data: Prepared, run_dir: Path) -> dict[str, Any]:
        ids, mask, y = data.test.tensors
        logits = []
        for start in range(0, len(ids), 256):
            batch_ids, batch_mask = ids[start : start + 256], mask[start : start + 256]
            longest = int(batch_mask.sum(1).max())
            logits.append(predict(batch_ids[:, :longest], batch_mask[:, :longest]))
        scores = classification_metrics(y.numpy(), np.concatenate(logits).argmax(1), data.labels)
        plot_confusion_matrix(scores["confusion_matrix"], data.labels, run_dir / "confusion_matrix.png")
        return scores

    def baseline(self, data: Prepared) -> dict[str, Any]:
        model = tfidf_logistic_regression().fit(data.extras["train_texts"], data.extras["train_labels"])
        predicted = model.predict(data.extras["test_texts"])
        scores = classification_metrics(data.test.tensors[-1].numpy(), predicted, data.labels)
        return {"tfidf_logistic_regression": {k: scores[k] for k in ("accuracy", "macro_f1")}}


register_task(TextClassificationTask())


@register_fine_tuning("text-classification")
class TextFineTuning(FineTuning, TextClassificationTask):
    """A new text classifier on a stored one's encoder: the parent's tokenizer and encoding, a new head."""

    def load_data(self, cfg: TrainConfig) -> Prepared:
        if not cfg.data:
            raise DataRefused("--data PATH is needed: a CSV with text and label columns, or a folder of .txt per class")
        frame = distinct_texts(read_labelled_texts(Path(cfg.data)))
        labels = sorted(frame["label"].unique())
        y = frame["label"].map({name: i for i, name in enumerate(labels)}).to_numpy(np.int64)
        check_counts(y, labels)
        prep = self.parent.card.preprocessing
        assert isinstance(prep, TextPreprocessing)
        splits = held_out_split(y, cfg.val_fraction, cfg.seed)
        tokenizer = self.parent.folder / prep.tokenizer
        source = str(Path(cfg.data).resolve())
        return prepared_texts(frame["text"].tolist(), y, labels, splits, tokenizer, prep.text, source)

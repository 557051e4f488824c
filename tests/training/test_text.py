import numpy as np
import pandas as pd
import pytest
import torch

from contracts.preprocessing import TextEncoding
from training.config import TrainConfig
from training.tasks.text import (
    SPECIAL_TOKENS,
    WORDNET_NOUNS,
    LengthBuckets,
    TextClassificationTask,
    read_wordnet_glosses,
    train_tokenizer,
)

TASK = TextClassificationTask()


def test_wordnet_glosses_carry_readable_categories():
    frame = read_wordnet_glosses(WORDNET_NOUNS)
    assert (
        len(frame) > 80_000 and frame["label"].nunique() == 26
    )  # lexicographer files 03 (noun.Tops) .. 28 (noun.time)
    entity = frame.iloc[0]
    assert entity["label"] == "Tops" and entity["text"].startswith("that which is perceived")
    assert {"animal", "food", "artifact", "person", "plant"} <= set(frame["label"])


def test_splits_are_disjoint_and_the_tokenizer_travels_with_the_model(tmp_path):
    data = TASK.load_data(TrainConfig(task="wordnet-transformer", dry_run=True, out_dir=str(tmp_path)))
    train_texts, test_texts = set(data.extras["train_texts"]), set(data.extras["test_texts"])
    assert not train_texts & test_texts
    assert data.preprocessing.tokenizer == "tokenizer.json" and data.files["tokenizer.json"].exists()


def test_tokenizer_is_trained_on_given_texts_and_pads_to_the_longest():
    tokenizer = train_tokenizer(["a small dog", "a large cat", "a small cat sat"] * 20, vocab_size=60)
    encoding = TextEncoding(max_tokens=3)
    ids = encoding.token_ids(tokenizer, ["small dog", "a small cat sat on a mat"])
    assert len(ids[0]) == 2 and len(ids[1]) == 3  # truncated to max_tokens
    input_ids, mask = encoding.pad(ids)
    assert input_ids.shape == (2, 3) and input_ids.dtype == np.int64
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]] and input_ids[0, 2] == 0  # [PAD] is id 0
    assert tokenizer.token_to_id("[PAD]") == 0


def test_length_buckets_cover_every_row_once_with_similar_lengths():
    lengths = torch.randint(1, 60, (1000,))
    sampler = LengthBuckets(lengths, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0), pool=10)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    spread = np.mean([int(lengths[b].max() - lengths[b].min()) for b in batches])
    assert spread < 10  # random batches of 32 span ~55 tokens


def test_batches_are_trimmed_to_their_longest_text():
    rows = [
        (torch.tensor([5, 6, 0, 0]), torch.tensor([1, 1, 0, 0]), torch.tensor(1)),
        (torch.tensor([7, 0, 0, 0]), torch.tensor([1, 0, 0, 0]), torch.tensor(2)),
    ]
    ids, mask, y = TASK.collate(rows)
    assert ids.shape == (2, 2) and mask.tolist() == [[1, 1], [1, 0]] and y.tolist() == [1, 2]


def test_user_csv_needs_text_and_label_columns(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"sentence": ["x"], "label": ["y"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="needs the columns text and label"):
        TASK.load_data(TrainConfig(data=str(path), out_dir=str(tmp_path)))


def test_registered_text_models_float_and_int8(registered):
    float_card, int8_card = registered["wordnet-transformer"], registered["wordnet-transformer-int8"]
    assert float_card["parity_max_abs_diff"] <= 1e-4
    assert int8_card["variant"] == "int8" and int8_card["variant_of"] == float_card["tag"]
    assert "tfidf_logistic_regression" in float_card["baseline"]
    assert {"accuracy", "macro_f1", "per_class"} <= set(int8_card["metrics"])
    assert [i["name"] for i in float_card["inputs"]] == ["input_ids", "attention_mask"]


def test_word_dropout_hides_only_real_tokens_as_unk():
    task = TextClassificationTask()
    ids = torch.randint(3, 500, (64, 20))
    mask = torch.ones_like(ids)
    mask[:, 15:] = 0
    ids[:, 15:] = 0
    task.token_dropout = 0.25
    dropped, same_mask = task.augment((ids, mask), torch.Generator().manual_seed(0))
    unk = dropped == SPECIAL_TOKENS.index("[UNK]")
    assert torch.equal(same_mask, mask) and not unk[:, 15:].any()
    assert 0.2 < unk[:, :15].float().mean() < 0.3
    assert torch.equal(dropped[~unk], ids[~unk])

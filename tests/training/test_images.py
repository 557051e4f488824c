import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import TrainConfig
from training.tasks.base import split_indices
from training.tasks.images import ImageClassificationTask, read_idx


def write_idx(path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_reads_what_was_written(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), array)


def test_read_idx_refuses_other_files(tmp_path):
    (tmp_path / "x").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "x")


def test_validation_split_is_disjoint_and_seeded():
    train, val = split_indices(1000, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val)
    np.testing.assert_array_equal(split_indices(1000, 0.1, seed=3)[1], val)


def test_user_image_folder_trains_with_its_own_class_names(tmp_path):
    rng = np.random.default_rng(0)
    for name, level in (("cats", 30), ("dogs", 220)):
        (tmp_path / name).mkdir()
        for i in range(10):
            pixels = np.clip(rng.normal(level, 10, (40, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    data = ImageClassificationTask().load_data(TrainConfig(data=str(tmp_path), val_fraction=0.2))
    assert data.labels == ["cats", "dogs"]
    assert len(data.train) + len(data.val) + len(data.test) == 20
    x, _y = data.train.tensors
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
    # statistics are fitted on the training split: it is normalized to mean ~0, std ~1
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1


def test_missing_default_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        ImageClassificationTask().load_data(TrainConfig(data=str(tmp_path / "nowhere")))


def test_augmentation_shifts_and_flips_but_keeps_shape_and_values():
    task = ImageClassificationTask()
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 4:10] = 1.0  # an off-centre block: flips and shifts move it
    (augmented,) = task.augment((x,), torch.Generator().manual_seed(0))
    assert augmented.shape == x.shape
    assert not torch.equal(augmented, x)
    assert set(augmented.unique().tolist()) <= {0.0, 1.0}
    moved = (augmented != x).flatten(1).any(1).float().mean()
    assert 0.5 < moved <= 1.0  # most samples change; the block is never lost entirely
    assert (augmented.flatten(1).sum(1) > 0).all()

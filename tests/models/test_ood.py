"""The OOD score's parts (models/ood.py) against their definitions."""

import numpy as np
import torch

from models.ood import Mahalanobis, Scored, TokenSurprise, features_of, window_shape


def test_mahalanobis_is_the_smallest_distance_to_a_class_mean_under_the_shared_covariance():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(600, 4)) @ rng.normal(size=(4, 4))
    classes = np.repeat([0, 2, 3], 200)  # class 1 has no rows: it gets no mean
    features[classes == 2] += 5.0
    score = Mahalanobis.fit(torch.from_numpy(features), torch.from_numpy(classes), ridge=0.0)
    means = np.stack([features[classes == k].mean(0) for k in (0, 2, 3)])
    centred = features - means[np.searchsorted([0, 2, 3], classes)]
    precision = np.linalg.inv(centred.T @ centred / len(features))
    queries = rng.normal(size=(5, 4)) * 3
    expected = [min((q - m) @ precision @ (q - m) for m in means) for q in queries]
    got = score(torch.from_numpy(queries).float()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_token_surprise_ignores_padding_and_rises_for_rare_tokens():
    ids = torch.tensor([[1, 1, 1, 2], [1, 1, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    surprise = TokenSurprise.fit(ids, mask, vocab_size=5)
    common, rare = torch.tensor([[1, 1, 0, 0]]), torch.tensor([[4, 4, 0, 0]])
    pad = torch.tensor([[1, 1, 0, 0]])
    assert surprise(common, pad) < surprise(rare, pad)
    assert torch.equal(surprise(torch.tensor([[1, 1, 4, 4]]), pad), surprise(common, pad))  # padding not read


def test_a_history_shape_ignores_level_and_sees_step_size():
    t = torch.arange(156, dtype=torch.float32)
    history = (torch.sin(t * 2 * torch.pi / 52) + t / 100)[None]
    assert torch.allclose(window_shape(history), window_shape(history + 7.0), atol=1e-5)
    louder = window_shape(history * 3)
    assert louder[0, 0] > window_shape(history)[0, 0] and louder[0, 2] > window_shape(history)[0, 2]


class TwoFeatures(torch.nn.Module):
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(1, keepdim=True), x


def test_a_calibrated_score_reads_zero_on_typical_inputs_in_validation_standard_deviations():
    rng = torch.Generator().manual_seed(0)
    train, val = torch.randn(2000, 2, generator=rng), torch.randn(1000, 2, generator=rng)
    scored = Scored(TwoFeatures(), {"mahalanobis": Mahalanobis.fit(train)}, {"mahalanobis": features_of})
    scored.calibrate([(val[:500],), (val[500:],)])
    output, score = scored(val)
    assert torch.equal(output, val.sum(1, keepdim=True))
    assert abs(float(score.mean())) < 1e-4 and abs(float(score.std()) - 1) < 1e-3
    far = scored(torch.tensor([[8.0, -8.0]]))[1]
    assert float(far) > 10  # 128 squared units away: dozens of validation standard deviations

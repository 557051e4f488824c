import dataclasses

import pytest
import torch

from models import build_model, config_from_dict, list_models
from models.cnn import CNNConfig
from models.rnn import RNNConfig
from models.transformer import TransformerConfig

EXAMPLE_INPUTS = {
    "cnn": lambda: (torch.randn(3, 1, 28, 28),),
    "rnn": lambda: (torch.randn(3, 40),),
    "transformer": lambda: (torch.randint(1, 8000, (3, 12)), torch.ones(3, 12, dtype=torch.int64)),
    "latent-diffusion": lambda: (torch.rand(3, 1, 28, 28), torch.tensor([0, 4, 10])),  # 10: no class
    "cgan": lambda: (torch.rand(3, 1, 28, 28), torch.tensor([0, 4, 9])),
}
# The generative nets answer with each image's training loss.
EXPECTED_OUTPUT = {"cnn": (3, 10), "rnn": (3, 52), "transformer": (3, 26), "latent-diffusion": (3,), "cgan": (3,)}


def test_every_registered_net_has_a_test_input():
    assert set(list_models()) == set(EXAMPLE_INPUTS)


@pytest.mark.parametrize("name", list_models())
def test_net_builds_by_name_and_maps_a_batch(name):
    net = build_model(name).eval()
    with torch.no_grad():
        out = net(*EXAMPLE_INPUTS[name]())
    assert tuple(out.shape) == EXPECTED_OUTPUT[name]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_config_round_trips_through_a_plain_dict(name):
    net = build_model(name)
    values = dataclasses.asdict(net.config)
    assert config_from_dict(name, values) == net.config


def test_unknown_names_and_fields_are_refused_with_the_known_ones():
    with pytest.raises(KeyError, match=r"registered: .*cnn"):
        build_model("nope")
    with pytest.raises(ValueError, match=r"unknown config fields \['widht'\]"):
        config_from_dict("cnn", {"widht": 3})


def test_cnn_config_shapes_the_net():
    net = build_model("cnn", CNNConfig(num_classes=4, channels=(8, 16), hidden=32)).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in net.modules())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_cell_is_a_config_field_and_any_history_length_works(cell):
    net = build_model("rnn", RNNConfig(cell=cell, hidden=8, layers=1, horizon=5)).eval()
    assert isinstance(net.rnn, torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)
    with torch.no_grad():
        for length in (1, 17, 300):
            assert net(torch.randn(2, length)).shape == (2, 5)


def test_unknown_rnn_cell_is_refused():
    with pytest.raises(ValueError, match=r"cell must be one of \['gru', 'lstm'\]"):
        build_model("rnn", RNNConfig(cell="rnn"))


def test_transformer_answers_do_not_depend_on_padding():
    torch.manual_seed(0)
    net = build_model("transformer", TransformerConfig(vocab_size=50, d_model=16, heads=2, ff=32, num_classes=3)).eval()
    ids = torch.tensor([[5, 6, 7]])
    padded_ids = torch.tensor([[5, 6, 7, 0, 0, 0]])
    padded_mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        alone = net(ids, torch.ones_like(ids))
        padded = net(padded_ids, padded_mask)
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)

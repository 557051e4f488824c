import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models import build_model
from models.cnn import CNNConfig
from training.export import ExportError, check_parity, export_onnx
from training.tasks.images import ImageClassificationTask

TASK = ImageClassificationTask()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("cnn", CNNConfig(channels=(4, 8), hidden=16)).eval()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    opset = export_onnx(net, TASK, (torch.randn(4, 1, 28, 28),), path)
    return net, path, opset


def test_export_writes_one_checked_file_with_a_dynamic_batch_axis(exported):
    _, path, opset = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no external-data side file
    model = onnx.load(str(path))
    (graph_input,) = model.graph.input
    assert graph_input.name == "pixels" and model.graph.output[0].name == "logits"
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # named: dynamic
    assert opset >= 17


def test_exported_graph_matches_torch_at_other_batch_sizes(exported):
    net, path, _ = exported
    batches = [(torch.randn(n, 1, 28, 28),) for n in (1, 3, 37)]
    assert check_parity(net, TASK, path, batches) <= 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"pixels": np.zeros((5, 1, 28, 28), np.float32)})[0].shape == (5, 10)


def test_parity_failure_stops_the_export(exported):
    net, path, _ = exported
    changed = build_model("cnn", net.config).eval()
    changed.load_state_dict(net.state_dict())
    with torch.no_grad():
        changed.head[-1].bias += 1.0  # the ONNX file no longer computes what this net computes
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_parity(changed, TASK, path, [(torch.randn(4, 1, 28, 28),)])


def test_a_batch_of_one_is_refused_as_export_example(tmp_path):
    net = build_model("cnn").eval()
    with pytest.raises(ExportError, match="batch of at least 2"):
        export_onnx(net, TASK, (torch.randn(1, 1, 28, 28),), tmp_path / "m.onnx")


def test_a_scored_net_exports_its_ood_score_as_a_second_output_held_to_parity(tmp_path):
    from models.ood import Mahalanobis, Scored, features_of

    torch.manual_seed(0)
    net = build_model("cnn", CNNConfig(channels=(4, 8), hidden=16)).eval()
    features = net.embed(torch.randn(64, 1, 28, 28))[1].detach()
    scored = Scored(net, {"mahalanobis": Mahalanobis.fit(features)}, {"mahalanobis": features_of}).eval()
    path = tmp_path / "model.onnx"
    export_onnx(scored, TASK, (torch.randn(4, 1, 28, 28),), path)
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits", "ood_score"]
    assert check_parity(scored, TASK, path, [(torch.randn(n, 1, 28, 28),) for n in (1, 7)]) <= 1e-4
    with torch.no_grad():
        scored.spread *= 2  # the same logits, other scores: the file no longer computes this net's scores
    with pytest.raises(ExportError, match="OOD score relative diff"):
        check_parity(scored, TASK, path, [(torch.randn(4, 1, 28, 28),)])

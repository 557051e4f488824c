"""`python -m training import`: a user's own ONNX file checked and registered, or refused with the reason."""

import os
from pathlib import Path

import bentoml
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import convert_model_to_external_data

from training.__main__ import main
from training.import_model import ImportRefused, import_model


def scale_graph(factor: float, batch: int | str = "batch", opset: int = 17) -> onnx.ModelProto:
    """y = x * factor over (batch, 3) float32: the tiniest model worth serving."""
    weight = numpy_helper.from_array(np.full((3,), factor, np.float32), "factor")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "factor"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def write(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_an_imported_model_is_registered_with_its_tensors_labels_and_checksums(session_dir, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    tag = import_model(write(scale_graph(2.0), tmp_path / "scale.onnx"), "scale-import", labels)
    stored = bentoml.models.get(tag)
    meta = stored.info.metadata
    assert meta["task"] == "imported" and meta["labels"] == ["a", "b", "c"] and "family" not in meta
    assert meta["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}]
    assert meta["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}]
    assert set(meta["sha256"]) == {"model.onnx"}


def test_external_data_inside_the_models_folder_is_stored_beside_it(tmp_path):
    model = scale_graph(3.0)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="scale.bin", size_threshold=0)
    tag = import_model(write(model, tmp_path / "m" / "scale.onnx"), "scale-external")
    stored = bentoml.models.get(tag)
    assert set(stored.info.metadata["sha256"]) == {"model.onnx", "scale.bin"}
    assert Path(stored.path_of("scale.bin")).is_file()


def external(location: str, tmp_path: Path) -> Path:
    """A model whose one tensor claims its data lies at `location`."""
    model = scale_graph(2.0)
    tensor = model.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return write(model, tmp_path / "m" / "model.onnx")


@pytest.mark.parametrize(
    "location,error",
    [
        ("/etc/passwd", "must be a plain relative path"),
        ("../secret.bin", "must be a plain relative path"),
        ("link.bin", "leads outside the model's folder"),
        ("missing.bin", "is missing"),
    ],
)
def test_external_data_outside_the_models_folder_is_refused(tmp_path, location, error):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 12)
    path = external(location, tmp_path)
    os.symlink(tmp_path / "secret.bin", path.parent / "link.bin")
    with pytest.raises(ImportRefused, match=error):
        import_model(path, "refused")


def test_a_graph_the_checker_refuses_an_unknown_opset_and_a_bad_name_are_refused(tmp_path):
    broken = scale_graph(2.0)
    broken.graph.node[0].input[1] = "nowhere"
    with pytest.raises(ImportRefused, match=r"onnx\.checker refused"):
        import_model(write(broken, tmp_path / "broken.onnx"), "broken")
    with pytest.raises(ImportRefused, match="opset 99 is outside"):
        import_model(write(scale_graph(2.0, opset=99), tmp_path / "future.onnx"), "future")
    with pytest.raises(ImportRefused, match="lower-case letters"):
        import_model(write(scale_graph(2.0), tmp_path / "ok.onnx"), "Bad Name")


def test_the_command_line_imports_or_says_why_not(tmp_path, caplog):
    good = write(scale_graph(2.0, batch=1), tmp_path / "fixed.onnx")
    assert main(["import", str(good), "--name", "scale-fixed"]) == 0
    assert main(["import", str(tmp_path / "absent.onnx"), "--name", "absent"]) == 2
    assert "not a regular file" in caplog.text


def sklearn_classifier(
    tmp_path: Path, zipmap: bool, labels: list, external: bool = False
) -> tuple[Path, np.ndarray, object]:
    """A scaler + logistic regression exported by skl2onnx (ZipMap on by default), its test inputs and the pipeline."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    random = np.random.default_rng(1)
    x = random.normal(size=(60, 4)).astype(np.float32)
    y = np.array(labels)[(x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)]
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    options = {} if zipmap else {"zipmap": False}
    graph = to_onnx(pipeline, x[:1], options={id(pipeline): options} if options else None, target_opset=17)
    path = tmp_path / "classifier" / "classifier.onnx"
    path.parent.mkdir()
    # External data: every initializer in a file beside the graph, as large models come.
    onnx.save_model(graph, str(path), save_as_external_data=external, location="weights.bin", size_threshold=0)
    return path, x, pipeline


@pytest.mark.parametrize("labels", [[0, 1, 2], ["coat", "dress", "shirt"]], ids=["int-labels", "str-labels"])
@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "no-zipmap"])
@pytest.mark.parametrize("external", [False, True], ids=["one-file", "external-data"])
def test_a_scikit_learn_classifier_is_served_as_tensors_with_its_labels(
    session_dir, tmp_path, zipmap, labels, external
):
    path, x, pipeline = sklearn_classifier(tmp_path, zipmap, labels, external)
    examples = tmp_path / "examples.npz"
    np.savez(examples, X=x[:5])
    tag = import_model(path, "sk-classifier", examples_path=examples if external else None)
    stored = bentoml.models.get(tag)
    meta = stored.info.metadata
    label, probability = meta["outputs"]  # skl2onnx names them output_label and output_probability (or probabilities)
    assert probability["dtype"] == "float32" and probability["shape"][1:] == [3]
    if zipmap:
        assert meta["labels"] == [str(label) for label in labels]
    session = onnxruntime.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    answered, probabilities = session.run([label["name"], probability["name"]], {"X": x})
    np.testing.assert_allclose(probabilities, pipeline.predict_proba(x), atol=1e-5)
    assert answered.tolist() == pipeline.predict(x).tolist()


def test_example_inputs_that_are_not_the_graphs_are_refused(session_dir, tmp_path):
    path, x, _ = sklearn_classifier(tmp_path, True, [0, 1, 2])
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, features=x[:2])
    with pytest.raises(ImportRefused, match=r"holds the arrays \['features'\]; the graph's inputs are \['X'\]"):
        import_model(path, "sk-wrong", examples_path=wrong)
    narrow = tmp_path / "narrow.npz"
    np.savez(narrow, X=x[:2, :3])  # 3 features for a graph of 4
    with pytest.raises(ImportRefused, match="the graph fails on your example inputs"):
        import_model(path, "sk-narrow", examples_path=narrow)
    np.savez(tmp_path / "pickled.npz", X=np.array([{"a": 1}], dtype=object))  # would need unpickling: never
    with pytest.raises(ImportRefused, match=r"not an \.npz of arrays \(Object arrays cannot be loaded"):
        import_model(path, "sk-pickled", examples_path=tmp_path / "pickled.npz")


def test_a_map_output_that_is_no_zipmap_is_refused_naming_it(tmp_path):
    keys = numpy_helper.from_array(np.array([1, 2], np.int64), "keys")
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["pair"])],
        "pairs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_sequence_value_info("pair", TensorProto.FLOAT, ["batch", 3])],
        [keys],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(ImportRefused, match="output 'pair' is a sequence, not a tensor"):
        import_model(write(model, tmp_path / "pairs.onnx"), "pairs")

import hashlib
import shutil

import bentoml
import pytest

from contracts.card import ModelCard
from services.runtime.runner import (
    ModelIntegrityError,
    ModelLoadError,
    choose_providers,
    cpu_fallback_said,
    verified_model,
)
from services.settings import ServeSettings

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def test_cpu_is_cpu_even_where_cuda_exists():
    assert choose_providers("cpu", [CUDA, CPU]) == ([CPU], "cpu")


def test_auto_takes_cuda_when_onnxruntime_has_it():
    assert choose_providers("auto", [CUDA, CPU]) == ([CUDA, CPU], "cuda")


def test_auto_falls_back_to_cpu_with_one_log_line_a_process(caplog):
    cpu_fallback_said.cache_clear()  # as in a new process
    with caplog.at_level("WARNING"):
        assert choose_providers("auto", [CPU]) == ([CPU], "cpu")
        assert choose_providers("auto", [CPU]) == ([CPU], "cpu")  # a second model version loaded: no second line
    assert [r.message for r in caplog.records] == [
        "device=auto: ONNX Runtime has no CUDA provider here; running on CPU"
    ]


def test_cuda_without_a_cuda_build_refuses_to_start():
    with pytest.raises(RuntimeError, match=r"install onnxruntime-gpu"):
        choose_providers("cuda", [CPU])


def test_settings_come_from_the_environment_and_split_cores_among_workers():
    settings = ServeSettings.from_env(
        {
            "MODELROAD_DEVICE": "cpu",
            "MODELROAD_WORKERS": "2",
            "MODELROAD_CPU_COUNT": "8",
            "MODELROAD_ACCESS_LOG": "true",
        }
    )
    assert (settings.device, settings.workers, settings.ort_threads, settings.access_log) == ("cpu", 2, 4, True)
    assert ServeSettings.from_env({"MODELROAD_WORKERS": "4", "MODELROAD_CPU_COUNT": "2"}).ort_threads == 1


@pytest.mark.parametrize(
    "env,message",
    [
        ({"MODELROAD_DEVICE": "tpu"}, "choose cpu, cuda or auto"),
        ({"MODELROAD_PAYLOAD_SAMPLE_RATE": "1.5"}, "SAMPLE_RATE must be from 0 to 1"),
        ({"MODELROAD_PAYLOAD_LOG_FILES": "0"}, "LOG_FILES >= 1"),
        ({"MODELROAD_WORKERS": "two"}, "MODELROAD_WORKERS='two' is not a valid int"),
    ],
)
def test_bad_settings_say_which_variable_is_wrong(env, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings.from_env(env)


def test_a_model_file_changed_after_registration_is_refused(cnn_card, tmp_path):
    stored = bentoml.models.get(cnn_card["tag"])
    assert verified_model(cnn_card["tag"]).tag == stored.tag
    onnx_path = stored.path_of("model.onnx")
    backup = tmp_path / "model.onnx"
    shutil.copyfile(onnx_path, backup)
    try:
        with open(onnx_path, "ab") as f:
            f.write(b"\0")
        with pytest.raises(ModelIntegrityError, match=r"model.onnx has sha256 .* registered"):
            verified_model(cnn_card["tag"])
    finally:
        shutil.copyfile(backup, onnx_path)


def test_a_pinned_digest_admits_only_that_version_with_those_files(cnn_card):
    tag = cnn_card["tag"]
    digest = ModelCard.from_metadata(bentoml.models.get(tag).info.metadata).digest
    assert verified_model(tag, {tag: digest}).tag == bentoml.models.get(tag).tag
    assert verified_model(tag, {"other-model:v1": "sha256:0"}).tag  # pins of other names do not apply
    with pytest.raises(ModelIntegrityError, match="is not what MODELROAD_MODEL_DIGESTS pins"):
        verified_model(tag, {tag: "sha256:" + "0" * 64})
    with pytest.raises(ModelIntegrityError, match="is not what MODELROAD_MODEL_DIGESTS pins"):
        verified_model(tag, {f"{tag.split(':')[0]}:another-version": digest})
    assert ServeSettings(model_digests=f" {tag}={digest} ,").pinned_digests == {tag: digest}
    with pytest.raises(ValueError, match="write name:version=sha256"):
        _ = ServeSettings(model_digests="fashion-cnn").pinned_digests


def test_a_model_onnx_runtime_cannot_open_is_refused_at_start_even_with_matching_sha256():
    """As a model whose external data points out of its folder: the files are as registered, ONNX Runtime says no."""
    garbage = b"not an onnx graph"
    with (
        bentoml.models.create(
            "unloadable", metadata={"task": "imported", "sha256": {"model.onnx": hashlib.sha256(garbage).hexdigest()}}
        ) as model,
        open(model.path_of("model.onnx"), "wb") as f,
    ):
        f.write(garbage)
    with pytest.raises(ModelLoadError, match=r"unloadable:.* ONNX Runtime cannot load model\.onnx"):
        verified_model(str(model.tag))

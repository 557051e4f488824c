"""What ships: the serving code is torch-free, and `bentoml build` packs it with the registered models."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["services.platform", "services.runner_service"])
def test_the_services_import_without_torch(registered, module):
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=os.environ, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:] or f"{module} imported torch"


def requirement_names(text: str) -> set[str]:
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    return {re.split(r"[=<>!~\[ ;]", line)[0].lower() for line in lines if line}


def test_serving_requirements_leave_torch_out():
    names = requirement_names((ROOT / "requirements-serve.txt").read_text())
    assert "torch" not in names and {"bentoml", "onnxruntime"} <= names


def test_serving_requirements_are_the_packages_dependencies():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements-serve.txt").read_text().splitlines()]
    assert [line for line in lines if line] == dependencies


def bentoml_build(*options: str) -> str:
    """`bentoml build` with these options; the bento's tag."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("bentoml")), "build", *options, "--output", "tag"],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")  # it prints __tag__:NAME:VERSION


@pytest.mark.slow
def test_bentoml_build_packs_the_service_and_references_every_model(registered, session_dir):
    tag = bentoml_build()
    bento_dir = session_dir / "bentoml" / "bentos" / "modelroad" / tag.split(":")[1]
    bento = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    tags = {m["tag"] for m in bento["services"][0]["models"]}
    served = {name: card for name, card in registered.items() if "variant" not in card}  # int8 is opt-in
    assert tags == {card["tag"] for card in served.values()}
    # Every module of services/ and contracts/, in every package: the image imports them all.
    sources = [p.relative_to(ROOT) for package in ("services", "contracts") for p in (ROOT / package).rglob("*.py")]
    assert [str(s) for s in sources if not (bento_dir / "src" / s).exists()] == []
    assert not (bento_dir / "src" / "training").exists()
    assert "torch" not in requirement_names((bento_dir / "env" / "python" / "requirements.txt").read_text())


def test_the_gpu_variant_differs_from_the_cpu_one_only_in_its_runtime():
    cpu, gpu = (
        yaml.safe_load((ROOT / "bentofile.yaml").read_text()),
        yaml.safe_load((ROOT / "bentofile.gpu.yaml").read_text()),
    )
    for key in ("service", "include"):
        assert gpu[key] == cpu[key], key
    assert {e["name"]: e["value"] for e in gpu["envs"]}["MODELROAD_DEVICE"] == "cuda"
    cpu_lines = (ROOT / cpu["python"]["requirements_txt"]).read_text().splitlines()
    gpu_lines = (ROOT / gpu["python"]["requirements_txt"]).read_text().splitlines()
    requirements = [line for line in cpu_lines if line and not line.startswith("#")]
    gpu_requirements = [line for line in gpu_lines if line and not line.startswith("#")]
    assert gpu_requirements == [
        line.replace("onnxruntime>=1.20", "onnxruntime-gpu[cuda,cudnn]>=1.21") for line in requirements
    ]


def test_the_gpu_variant_declares_a_cuda_base_bentoml_can_build_with_onnx_runtime_cuda_12():
    from bentoml._internal.container.frontend.dockerfile import SUPPORTED_CUDA_VERSIONS

    cuda = yaml.safe_load((ROOT / "bentofile.gpu.yaml").read_text())["docker"]["cuda_version"]
    assert cuda in SUPPORTED_CUDA_VERSIONS
    assert cuda.split(".")[0] == "12"  # onnxruntime-gpu >= 1.19 on PyPI is built for CUDA 12 and cuDNN 9


def test_the_runner_gpu_variant_is_the_gpu_variant_serving_the_runner_service():
    gpu = yaml.safe_load((ROOT / "bentofile.gpu.yaml").read_text())
    runner = yaml.safe_load((ROOT / "bentofile.runner-gpu.yaml").read_text())
    for key in ("include", "python", "docker", "envs"):
        assert runner[key] == gpu[key], key
    assert runner["service"] == "services.runner_service:ModelRunner"


@pytest.mark.slow
@pytest.mark.parametrize(
    "bentofile,name", [("bentofile.gpu.yaml", "modelroad-gpu"), ("bentofile.runner-gpu.yaml", "modelroad-runner-gpu")]
)
def test_bentoml_builds_the_gpu_variants_with_every_served_model(registered, session_dir, bentofile, name):
    tag = bentoml_build("-f", bentofile)
    assert tag.startswith(f"{name}:")
    bento = yaml.safe_load((session_dir / "bentoml" / "bentos" / name / tag.split(":")[1] / "bento.yaml").read_text())
    served = {card["tag"] for card in registered.values() if "variant" not in card}
    assert {m["tag"] for m in bento["services"][0]["models"]} == served

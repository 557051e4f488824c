"""The serving image, built and checked with a real engine, offline: `python -m deploy.image build --check`.

The road: `bentoml build` (services, contracts, the registered models, requirements) → wheels for
the bento's requirements built on this machine, so pip inside the image never needs the network →
a Debian base image made here with debootstrap when the engine has none (no registry needed) →
`podman build` (or `docker build`) of deploy/container/Containerfile.
`python -m deploy.image check IMAGE` starts an image on a loopback port, asks every endpoint once,
reads /metrics, stops it with SIGTERM and prints the timings as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import yaml

from contracts.tensors import serialize_bytes
from harness.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
CONTAINER_DIR = ROOT / "deploy" / "container"
PAYLOADS = ROOT / "loadtests" / "payloads"
# One bentofile per variant: the same models, different runtime requirements and envs (runner-gpu: another service).
VARIANTS = {
    "cpu": ROOT / "bentofile.yaml",
    "gpu": ROOT / "bentofile.gpu.yaml",
    "runner-gpu": ROOT / "bentofile.runner-gpu.yaml",
}  # the GPU runner service (deploy/k8s-gpu)
DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, the version the wheels are built for
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tini")
BASE_IMAGE = f"localhost/modelroad-base:{DEBIAN_SUITE}"
# Left out of the base: nothing at run time reads them, and they are a third of a minbase system.
BASE_TRIM = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/log",
)


@dataclass(frozen=True)
class ImageBuild:
    variant: str = "cpu"  # a key of VARIANTS
    engine: str = "podman"  # or docker
    base_image: str = BASE_IMAGE  # made with debootstrap when the engine does not have it
    mirror: str | None = None  # Debian mirror for debootstrap; default: the one apt uses here
    extra_ca: Path | None = None  # PEM bundle added to the image's trust store (networks that re-sign HTTPS)
    work_dir: Path = ROOT / "build" / "image"

    @property
    def name(self) -> str:
        return "modelroad" if self.variant == "cpu" else f"modelroad-{self.variant}"


def engine_env(engine: str) -> dict[str, str]:
    """The environment for engine commands: podman gets the project's containers.conf unless one is set."""
    env = dict(os.environ)
    if Path(engine).name == "podman":
        env.setdefault("CONTAINERS_CONF", str(CONTAINER_DIR / "containers.conf"))
    return env


def run(command: list[str], engine: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, command)), file=sys.stderr, flush=True)
    env = engine_env(engine) if engine else None
    return subprocess.run(command, check=True, env=env, **kwargs)


def image_exists(engine: str, image: str) -> bool:
    result = subprocess.run(
        [engine, "image", "inspect", image], env=engine_env(engine), capture_output=True, check=False
    )
    return result.returncode == 0


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources), else deb.debian.org."""
    sources = [*sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]
    for path in sources:
        text = path.read_text() if path.is_file() else ""
        match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.MULTILINE) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s", text, re.MULTILINE
        )
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def build_base(build: ImageBuild) -> None:
    """A minimal Debian image with python3.11, venv, CA certificates and tini, imported into the engine."""
    if image_exists(build.engine, build.base_image):
        return
    if os.geteuid() != 0:
        raise SystemExit(
            f"{build.base_image} is not in {build.engine} and debootstrap needs root: "
            "run this as root once, or pass --base-image with a Debian bookworm image you have"
        )
    rootfs = build.work_dir / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            DEBIAN_SUITE,
            str(rootfs),
            build.mirror or debian_mirror(),
        ],
        stdout=subprocess.DEVNULL,
    )
    if build.extra_ca:
        shutil.copy(build.extra_ca, rootfs / "usr/local/share/ca-certificates/extra-ca.crt")
        run(["chroot", str(rootfs), "update-ca-certificates"], stdout=subprocess.DEVNULL)
    for trimmed in BASE_TRIM:
        for child in (rootfs / trimmed).glob("*"):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run(
        [build.engine, "import", "--change", 'CMD ["/bin/bash"]', "-", build.base_image],
        build.engine,
        stdin=tar.stdout,
        stdout=subprocess.DEVNULL,
    )
    if tar.wait() != 0:
        raise SystemExit("tar of the debootstrap root failed")
    shutil.rmtree(rootfs)


def build_bento(bentofile: Path, models_dir: Path) -> Path:
    """`bentoml build` with the variant's bentofile; returns the bento's folder, and copies the models it
    references into `models_dir` (a bento only references them; `bentoml containerize` does the same)."""
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    result = run(
        [str(bentoml_cli), "build", "-f", str(bentofile), "--output", "tag"], cwd=ROOT, capture_output=True, text=True
    )
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    import bentoml  # late: `--help` should not pay for it

    bento = bentoml.bentos.get(tag)
    shutil.rmtree(models_dir, ignore_errors=True)
    for model in bento.info.all_models:
        bentoml.models.BentoModel(model.tag).resolve(models_dir)
    return Path(bento.path)


def build_wheels(requirements: Path, wheel_dir: Path) -> None:
    """Wheels of every requirement for the image's Python, from this machine's pip configuration."""
    if sys.version_info[:2] != (3, 11):
        raise SystemExit(
            f"the image runs Debian {DEBIAN_SUITE}'s Python 3.11; run this with Python 3.11, "
            f"not {sys.version.split()[0]}"
        )
    wheel_dir.mkdir(parents=True, exist_ok=True)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
            "-w",
            str(wheel_dir),
        ]
    )
    shutil.copy(requirements, wheel_dir / "requirements.txt")


def make_world_readable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def build_image(build: ImageBuild) -> str:
    """Build the variant's image; returns its reference (NAME:BENTO_VERSION, also tagged NAME:latest)."""
    context = build.work_dir / f"context-{build.variant}"
    bento = build_bento(VARIANTS[build.variant], context / "models")
    build_base(build)
    shutil.rmtree(context / "bento", ignore_errors=True)
    shutil.copytree(bento, context / "bento")
    shutil.move(context / "models", context / "bento" / "models")
    make_world_readable(context / "bento")  # the store writes 0600 files; the server runs as another user
    build_wheels(bento / "env" / "python" / "requirements.txt", context / "wheels")
    shutil.copy(CONTAINER_DIR / "Containerfile", context / "Containerfile")
    envs = yaml.safe_load((bento / "bento.yaml").read_text()).get("envs") or []
    build_args = [f"--build-arg={env['name']}={env['value']}" for env in envs if env["name"].startswith("MODELROAD_")]
    image = f"{build.name}:{bento.name}"
    engine_build(build, context / "Containerfile", [image, f"{build.name}:latest"], build_args)
    return image


def engine_build(build: ImageBuild, containerfile: Path, tags: list[str], build_args: Sequence[str] = ()) -> None:
    """The engine builds `containerfile` (its folder is the context) on the project's base image."""
    tagged = [option for tag in tags for option in ("-t", tag)]
    command = [build.engine, "build", f"--build-arg=BASE={build.base_image}", *build_args, *tagged]
    run([*command, "-f", str(containerfile), str(containerfile.parent)], build.engine)


def build_prometheus_image(build: ImageBuild) -> str:
    """Prometheus with deploy/prometheus baked in, for the pod in deploy/podman (no registry needed)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("the Debian package prometheus is not installed (scripts/setup.sh installs it as root)")
    build_base(build)
    context = build.work_dir / "context-prometheus"
    context.mkdir(parents=True, exist_ok=True)
    for source in (
        Path(binary),
        ROOT / "deploy/prometheus/prometheus.yml",
        ROOT / "deploy/prometheus/rules.yml",
        CONTAINER_DIR / "Containerfile.prometheus",
    ):
        shutil.copy(source, context / source.name)
    image = "localhost/modelroad-prometheus:latest"
    engine_build(build, context / "Containerfile.prometheus", [image])
    return image


def image_megabytes(engine: str, image: str) -> float:
    result = run([engine, "image", "inspect", "--format", "{{.Size}}", image], engine, capture_output=True, text=True)
    return round(int(result.stdout.strip()) / 1e6, 1)


def ask_every_endpoint(url: str) -> dict[str, str]:
    """One real request per family; the answers' labels (or forecast length) by endpoint."""
    image = min((PAYLOADS / "images").glob("*.png"))
    with httpx.Client(base_url=url, timeout=30) as client:
        answers = {
            "/classify_image": client.post(
                "/classify_image", files={"image": (image.name, image.read_bytes(), "image/png")}
            ),
            "/forecast": client.post("/forecast", json=json.loads((PAYLOADS / "forecast_example.json").read_text())),
            "/classify_text": client.post(
                "/classify_text", json={"text": "a small domesticated carnivore kept as a pet"}
            ),
        }
    for endpoint, response in answers.items():
        if response.status_code != 200:
            raise RuntimeError(f"{endpoint} answered {response.status_code}: {response.text[:500]}")
    return {endpoint: str(r.json().get("label", len(r.json().get("forecast", [])))) for endpoint, r in answers.items()}


def ask_grpc(address: str) -> str:
    """One `ModelInfer` call to the image pipeline through the published gRPC port: the label it answers."""
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    image = min((PAYLOADS / "images").glob("*.png")).read_bytes()
    request = pb.ModelInferRequest(model_name="fashion-cnn-pipeline")
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(serialize_bytes([image]))
    request.outputs.add(name="label")
    with grpc.insecure_channel(address) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    return answer.raw_output_contents[0][4:].decode()  # one BYTES element: its length, then its bytes


@dataclass
class CheckReport:
    image: str
    image_mb: float
    ready_seconds: float  # from `run` to the first 200 on /readyz
    answers: dict[str, str]
    grpc_answer: str  # the image pipeline's label through the gRPC port
    metrics_ok: bool  # /metrics carries the platform's series
    stop_seconds: float  # SIGTERM to exit
    exit_code: int


def check_image(engine: str, image: str, ready_timeout: float = 120) -> CheckReport:
    """Run the image on a loopback port, ask every endpoint, read /metrics, stop it with SIGTERM."""
    port, grpc_port, name = free_port(), free_port(), f"modelroad-check-{os.getpid()}"
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    published = ["-p", f"127.0.0.1:{port}:3000", "-p", f"127.0.0.1:{grpc_port}:8001"]
    run(
        [engine, "run", "-d", "--init", "--name", name, *published, image],
        engine,
        stdout=subprocess.DEVNULL,
    )
    try:
        ready_seconds = wait_ready(engine, name, url, started, ready_timeout)
        answers = ask_every_endpoint(url)
        grpc_answer = ask_grpc(f"127.0.0.1:{grpc_port}")
        metrics_ok = "modelroad_model_info{" in httpx.get(f"{url}/metrics", timeout=10).text
        stopping = time.monotonic()
        run([engine, "stop", "--time", "30", name], engine, stdout=subprocess.DEVNULL)  # SIGTERM, SIGKILL after 30 s
        stop_seconds = time.monotonic() - stopping
        state = run(
            [engine, "inspect", "--format", "{{.State.ExitCode}}", name], engine, capture_output=True, text=True
        )
        return CheckReport(
            image,
            image_megabytes(engine, image),
            round(ready_seconds, 2),
            answers,
            grpc_answer,
            metrics_ok,
            round(stop_seconds, 2),
            int(state.stdout.strip()),
        )
    finally:
        subprocess.run([engine, "rm", "--force", name], env=engine_env(engine), capture_output=True, check=False)


def wait_ready(engine: str, name: str, url: str, started: float, timeout: float) -> float:
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    logs = subprocess.run([engine, "logs", name], env=engine_env(engine), capture_output=True, text=True, check=False)
    raise RuntimeError(f"{name} not ready after {timeout:.0f} s; its log ends:\n{(logs.stdout + logs.stderr)[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.image", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = ImageBuild()
    build_cmd = commands.add_parser("build", help="build the bento and the serving image")
    build_cmd.add_argument("--variant", choices=sorted(VARIANTS), default=defaults.variant)
    build_cmd.add_argument("--check", action="store_true", help="then run the image and check it")
    prometheus_cmd = commands.add_parser("prometheus", help="build the Prometheus image for deploy/podman")
    for command in (build_cmd, prometheus_cmd):
        command.add_argument("--engine", default=defaults.engine, help="podman (default) or docker")
        command.add_argument("--base-image", default=defaults.base_image)
        command.add_argument("--mirror", help="Debian mirror for debootstrap (default: the one apt uses)")
        command.add_argument("--extra-ca", type=Path, help="PEM certificates to trust inside the images")
        command.add_argument("--work-dir", type=Path, default=defaults.work_dir)
    check_cmd = commands.add_parser("check", help="run an image, ask every endpoint, stop it with SIGTERM")
    check_cmd.add_argument("image")
    check_cmd.add_argument("--engine", default=defaults.engine)
    args = parser.parse_args(argv)

    if args.command == "check":
        report = check_image(args.engine, args.image)
        print(json.dumps(dataclasses.asdict(report), indent=2))
        return 0 if report.exit_code == 0 and report.metrics_ok else 1
    build = ImageBuild(
        getattr(args, "variant", "cpu"), args.engine, args.base_image, args.mirror, args.extra_ca, args.work_dir
    )
    started = time.monotonic()
    image = build_image(build) if args.command == "build" else build_prometheus_image(build)
    summary: dict = {
        "image": image,
        "build_seconds": round(time.monotonic() - started, 1),
        "image_mb": image_megabytes(build.engine, image),
    }
    if getattr(args, "check", False):
        summary["check"] = dataclasses.asdict(check_image(build.engine, image))
    print(json.dumps(summary, indent=2))
    check = summary.get("check", {"exit_code": 0, "metrics_ok": True})
    return 0 if check["exit_code"] == 0 and check["metrics_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

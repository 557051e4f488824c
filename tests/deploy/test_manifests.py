"""An offline validator for deploy/: the Kubernetes manifests, the pod file and the container build
must agree with each other and with the service they deploy, so a renamed endpoint, port, setting
or image breaks a test here rather than a rollout. (Metric names: tests/integration/test_prometheus.py.)"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.image import BASE_IMAGE, CONTAINER_DIR, VARIANTS, ImageBuild
from services.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SETTINGS_VARIABLES = {f"MODELROAD_{f.name.upper()}" for f in dataclasses.fields(ServeSettings)}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def resources() -> dict[str, dict]:
    """The kustomization's resources by kind; every one of them well formed."""
    kustomization = load(K8S / "kustomization.yaml")
    by_kind = {}
    for name in kustomization["resources"]:
        resource = load(K8S / name)
        assert {"apiVersion", "kind", "metadata", "spec"} <= resource.keys(), name
        assert resource["metadata"]["name"] == "modelroad", name
        by_kind[resource["kind"]] = resource
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "prometheus-adapter.yaml"}
    assert manifests == set(kustomization["resources"]), "a manifest is missing from kustomization.yaml"
    return by_kind


def served_port() -> int:
    """The port the image's ENTRYPOINT serves on, which it also EXPOSEs."""
    containerfile = (CONTAINER_DIR / "Containerfile").read_text()
    port = int(re.search(r'"--port", "(\d+)"', containerfile).group(1))
    assert f"EXPOSE {port}" in containerfile
    return port


def test_the_deployment_serves_the_image_port_with_its_settings_and_resources(resources):
    deployment = resources["Deployment"]
    template = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (container,) = template["spec"]["containers"]
    assert container["image"] == ImageBuild().name
    assert container["ports"] == [
        {"name": "http", "containerPort": served_port()},
        {"name": "grpc", "containerPort": ServeSettings().grpc_port},
    ]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(served_port())
    unknown = {env["name"] for env in container["env"]} - SETTINGS_VARIABLES
    assert not unknown, f"not settings of services/settings.py: {unknown}"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys() <= container["resources"]["limits"].keys()


def test_probes_ask_the_service_paths_that_answer_200_once_ready(resources, client):
    container = resources["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    probes = [container[p]["httpGet"] for p in ("startupProbe", "livenessProbe")]
    assert [p["path"] for p in probes] == ["/readyz", "/livez"]
    for probe in probes:
        assert probe["port"] == "http"
        assert client.get(probe["path"]).status_code == 200, probe["path"]
    # Readiness through the gRPC port's health service (tests/integration/test_grpc.py checks its answers).
    assert container["readinessProbe"]["grpc"] == {"port": ServeSettings().grpc_port}


def test_draining_fits_in_the_grace_period(resources):
    from services.platform import Platform  # the traffic timeout bounds the slowest request

    pod = resources["Deployment"]["spec"]["template"]["spec"]
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + Platform.config["traffic"]["timeout"]


def test_service_hpa_pdb_and_monitor_point_at_the_deployment(resources):
    deployment, service = resources["Deployment"], resources["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    monitor = resources["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert {e["path"] for e in monitor["endpoints"]} == {"/metrics"}


def test_the_autoscaling_metric_is_the_one_the_adapter_serves(resources):
    (pods_metric,) = [
        m["pods"]["metric"]["name"]
        for m in resources["HorizontalPodAutoscaler"]["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    (rule,) = load(K8S / "prometheus-adapter.yaml")["rules"]
    assert rule["seriesQuery"].startswith(pods_metric + "{")


def test_the_pod_file_runs_the_images_the_builder_makes_on_loopback_ports():
    pod = load(ROOT / "deploy" / "podman" / "modelroad-pod.yaml")
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert containers["modelroad"]["image"] == f"localhost/{ImageBuild().name}:latest"
    assert containers["prometheus"]["image"] == "localhost/modelroad-prometheus:latest"
    assert containers["modelroad"]["ports"][0]["containerPort"] == served_port()
    scrape = load(ROOT / "deploy" / "prometheus" / "prometheus.yml")["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"127.0.0.1:{served_port()}"]  # the pod shares one network
    assert all(p["hostIP"] == "127.0.0.1" for c in containers.values() for p in c["ports"])


def test_every_bentofile_env_reaches_the_image():
    containerfile = (CONTAINER_DIR / "Containerfile").read_text()
    assert BASE_IMAGE in containerfile
    for bentofile in (path.name for path in VARIANTS.values()):
        for env in load(ROOT / bentofile)["envs"]:
            if env["name"].startswith("MODELROAD_"):
                assert env["name"] in SETTINGS_VARIABLES
                assert f"ARG {env['name']}" in containerfile, f"{bentofile}: {env['name']} is not a build ARG"


def test_rules_dashboards_and_autoscaling_use_only_series_the_service_exports():
    from prometheus_client.metrics import MetricWrapperBase

    from services.ops import metrics

    exported = {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    used = set()
    for path in ("prometheus/rules.yml", "grafana/modelroad.json", "k8s/hpa.yaml", "k8s/prometheus-adapter.yaml"):
        used |= set(re.findall(r"\b((?:modelroad|bentoml)_[a-z_]+)", (ROOT / "deploy" / path).read_text()))
    assert "modelroad_requests_in_progress" in used
    assert {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used} <= exported


def test_the_gpu_overlay_points_every_api_pod_at_a_gpu_runner_that_serves_the_image_port():
    overlay = ROOT / "deploy" / "k8s-gpu"
    runner = {doc["kind"]: doc for doc in yaml.safe_load_all((overlay / "runner.yaml").read_text())}
    deployment, service, monitor = runner["Deployment"], runner["Service"], runner["ServiceMonitor"]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["image"] == ImageBuild("runner-gpu").name
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["ports"] == [{"name": "http", "containerPort": served_port()}]
    assert {env["name"] for env in container["env"]} <= SETTINGS_VARIABLES
    assert [container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")] == [
        "/readyz",
        "/readyz",
        "/livez",
    ]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    (patched,) = load(overlay / "api-calls-runner.yaml")["spec"]["template"]["spec"]["containers"]
    assert patched["env"] == [
        {"name": "MODELROAD_RUNNER_URL", "value": f"http://{service['metadata']['name']}:{port['port']}"}
    ]
    assert load(overlay / "kustomization.yaml")["resources"] == ["../k8s", "runner.yaml"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_the_gpu_overlay_renders_with_kustomize_and_patches_the_api_deployment():
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "k8s-gpu")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    deployments = {d["metadata"]["name"]: d for d in yaml.safe_load_all(rendered) if d["kind"] == "Deployment"}
    assert set(deployments) == {"modelroad", "modelroad-runner"}
    api_env = {e["name"]: e for e in deployments["modelroad"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert api_env["MODELROAD_RUNNER_URL"]["value"] == "http://modelroad-runner:3000"
    assert "MODELROAD_CPU_COUNT" in api_env  # the base's settings are kept, not replaced


def test_the_rules_pass_their_promtool_unit_tests_the_ood_and_rollout_alerts_among_them():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; scripts/setup.sh installs it as root)")
    tests = ROOT / "deploy" / "prometheus" / "rules_test.yml"
    assert {"ModelroadInputsOutOfDistribution", "ModelroadVersionErrors", "ModelroadShadowDisagrees"} <= set(
        re.findall(r"alertname: (\w+)", tests.read_text())
    )
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_is_valid_kubernetes_1_37_and_the_pods_share_one_store(resources):
    """Each rendered resource against the Kubernetes 1.37 schemas (kubernetes-validate, offline); the
    ServiceMonitor is the Prometheus operator's CRD, which those schemas do not hold."""
    import kubernetes_validate

    documents = [*resources.values(), load(K8S / "jobs" / "rollout.yaml")]
    for document in documents:
        if document["kind"] == "ServiceMonitor":
            continue
        kubernetes_validate.validate(document, "1.37", strict=True)
    assert resources["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == resources["PersistentVolumeClaim"]["metadata"]["name"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] == volume["name"]}
    # The fleet's state and the bento's model store on the shared volume: every pod reads one of each.
    assert any(env["MODELROAD_FLEET_STATE"]["value"].startswith(path + "/") for path in mounts)
    assert mounts["/home/bentoml/bento/models"]["subPath"] == "models"
    (fill,) = pod["initContainers"]
    assert "/home/bentoml/bento/models/." in fill["command"][-1] and "cp -Rn" in fill["command"][-1]


def test_the_rollout_job_runs_code_the_image_carries():
    job = load(K8S / "jobs" / "rollout.yaml")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "deploy.rollout"] and container["image"] == ImageBuild().name
    included = load(ROOT / "bentofile.yaml")["include"]
    assert {"deploy/__init__.py", "deploy/rollout.py"} <= set(included)
    assert any(arg.startswith("--prometheus=") for arg in container["args"])

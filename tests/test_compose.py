"""compose.yaml, checked statically (no Docker engine on our machines): every build context and
Dockerfile exists, every command is a real `neo` subcommand with real options, every NEO_* variable is
a field of the service's settings class, and the wiring (health, GPUs, volumes, AOF) is in place."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neo.settings import NeoSettings
from neo_dataproc.settings import DataprocSettings
from neo_serving.settings import ServingSettings
from neo_trainer.settings import TrainerSettings
from neo_ui.settings import UISettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SETTINGS = {"data": DataprocSettings, "train": TrainerSettings, "serve": ServingSettings, "ui": UISettings,
            "up": NeoSettings}


def neo_services():
    return [(name, svc) for name, svc in SERVICES.items()
            if svc.get("command", [None])[0] == "neo" and not svc["command"][1].startswith("-")]


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if "build" in s])
def test_build_contexts_and_dockerfiles_exist(name):
    build = SERVICES[name]["build"]
    context = ROOT / build["context"]
    dockerfile = context / build.get("dockerfile", "Dockerfile") if "dockerfile" not in build \
        else ROOT / build["context"] / build["dockerfile"]
    assert context.is_dir(), context
    assert dockerfile.is_file(), dockerfile
    text = dockerfile.read_text()
    if not name.startswith("neo-base"):  # service images build FROM a shared base, named as an additional context
        assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
        base = build["additional_contexts"][build["args"]["BASE_IMAGE"]]
        assert base in ("service:neo-base", "service:neo-base-gpu") and base.split(":")[1] in SERVICES
    for src in re.findall(r"^COPY (\S+)", text, re.M):  # everything the base image copies is in the repo
        assert (context / src).exists(), src


@pytest.mark.parametrize("name, svc", neo_services(), ids=[n for n, _ in neo_services()])
def test_commands_are_real_neo_subcommands(name, svc):
    args = svc["command"][1:]
    path = []
    for arg in args:
        if arg.startswith("-"):
            break
        path.append(arg)
    run = subprocess.run([sys.executable, "-m", "neo.cli", *path, "--help"], capture_output=True, text=True,
                         timeout=120, env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    for option in (a for a in args if a.startswith("--")):
        assert option in run.stdout, f"{name}: `neo {' '.join(path)}` has no option {option}"


@pytest.mark.parametrize("name, svc", neo_services(), ids=[n for n, _ in neo_services()])
def test_environment_matches_settings_fields(name, svc):
    settings = SETTINGS[svc["command"][1]]
    env = svc.get("environment", {})
    for key in env:
        assert key.startswith("NEO_"), key
        assert key.removeprefix("NEO_").lower() in settings.model_fields, (
            f"{name}: {key} is not a {settings.__name__} field")


def test_wiring():
    for name, svc in SERVICES.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dep], (
                    f"{name} waits for {dep} to be healthy, but it has no healthcheck")
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):  # a bind mount of a file or folder in this repository
                assert (ROOT / source).exists(), volume
            else:
                assert source in COMPOSE["volumes"], volume
    redis = SERVICES["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"  # preferences are durable
    assert {"cpu", "gpu"} <= {p for s in SERVICES.values() for p in s.get("profiles", [])}
    # GPU profile: trainer and serving reserve GPUs (separate ids by default) on the CUDA base image
    gpus = {}
    for gpu_service in ("trainer", "serving"):
        svc = SERVICES[gpu_service]
        device = svc["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["capabilities"] == ["gpu"]
        gpus[gpu_service] = device["device_ids"]
        assert svc["build"]["additional_contexts"]["neo-base"] == "service:neo-base-gpu"
        assert svc["ipc"] == "host"
    assert gpus["trainer"] != gpus["serving"]
    assert "whl/cu" in SERVICES["neo-base-gpu"]["build"]["args"]["TORCH_INDEX"]
    # serving runs vLLM replicas itself, from the venv its image builds, and follows the registry
    serving = SERVICES["serving"]
    assert serving["command"][serving["command"].index("--engine") + 1] == "vllm"
    assert "--watch-registry" in serving["command"]
    dockerfile = (ROOT / serving["build"]["context"] / serving["build"]["dockerfile"]).read_text()
    assert f"--venv {serving['environment']['NEO_VLLM_PYTHON'].removesuffix('/bin/python')}" in dockerfile
    assert re.search(r"VLLM_PACKAGE=vllm==\d", dockerfile)  # a pinned vLLM
    assert "--gpu-memory-utilization" in serving["environment"]["NEO_VLLM_ARGS"]
    assert serving["environment"]["NEO_VLLM_DEVICES"] == "${NEO_VLLM_DEVICES:-[]}"  # replicas' GPUs forwarded
    # the UI reaches whichever serving runs under the name `serving`
    assert SERVICES["ui"]["environment"]["NEO_API_URL"].startswith("http://serving:")
    assert "serving" in SERVICES["serving-cpu"]["networks"]["default"]["aliases"]


def test_monitoring_profile_scrapes_serving_and_its_replicas():
    prometheus = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    targets = {(job.get("metrics_path", "/metrics"), t) for job in prometheus["scrape_configs"]
               for group in job["static_configs"] for t in group["targets"]}
    assert targets == {("/metrics", "serving:8000"), ("/metrics/replicas", "serving:8000")}
    for name in ("prometheus", "grafana"):
        assert SERVICES[name]["profiles"] == ["monitoring"]
    dashboards = ROOT / "monitoring" / "grafana" / "dashboards"
    provider = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/dashboards/neo.yml").read_text())
    mounted = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    assert (ROOT / mounted[provider["providers"][0]["options"]["path"]]).resolve() == dashboards.resolve()
    assert list(dashboards.glob("*.json"))



@pytest.mark.parametrize(("value", "devices"), [("[]", []), ('["0","1"]', ["0", "1"])])
def test_the_forwarded_vllm_devices_parse_as_the_setting(monkeypatch, value, devices):
    """What compose passes (its default ``[]``, or a user's JSON list) is a valid NEO_VLLM_DEVICES."""
    monkeypatch.setenv("NEO_VLLM_DEVICES", value)
    assert ServingSettings().vllm_devices == devices

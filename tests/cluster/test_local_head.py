"""cluster/: the launcher, KubeRay and local-head files are what Ray and KubeRay accept, they name only
files, flags and settings that exist, the cluster configs fit the machines they are sized for, and (marker
`cluster`) a local head started by cluster/local/start.sh trains and segments through `ray job submit`."""
from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import rasterio
import ray
import torch
import yaml

from segcore.checkpoint import Checkpoint
from segcore.config import InputConfig, ModelConfig, load_config
from segcore.model import build_model
from tests import jobs
from tests.conftest import REPO

CLUSTER = REPO / "cluster"
LOCAL = CLUSTER / "local"
AWS = CLUSTER / "aws" / "cluster.yaml"
RAYJOBS = sorted((CLUSTER / "k8s").glob("rayjob-*.yaml"))
SCRIPTS = sorted(LOCAL.glob("*.sh"))
IMAGE_ROOT = "/app/"  # where cluster/docker/Dockerfile puts the project
JOB_SCRIPTS = {"submit-train.sh": "jobs/train.py", "submit-segment.sh": "jobs/segment.py"}


def load_yaml(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1 and isinstance(docs[0], dict), f"{path}: expected one YAML mapping"
    return docs[0]


def cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------- static checks

def test_every_yaml_file_parses_and_the_scripts_pass_bash_n():
    yamls = [p for p in cluster_files() if p.suffix in (".yaml", ".yml")]
    assert {AWS, LOCAL / "runtime_env.yaml", *RAYJOBS} <= set(yamls) and len(RAYJOBS) == 2
    for path in yamls:
        load_yaml(path)
    assert {p.name for p in SCRIPTS} >= {"start.sh", "stop.sh", "submit.sh", "submit-train.sh", "submit-segment.sh"}
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"
        if script.name != "env.sh":  # sourced, not run
            assert os.access(script, os.X_OK), f"{script} is not executable"


def test_no_credentials_in_cluster_files():
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY|aws_session_token", re.I)
    for path in [*cluster_files(), REPO / "configs" / "cluster-train.yaml", REPO / "configs" / "cluster-segment.yaml"]:
        if path.suffix != ".md":  # the README names the variables to say where they come from
            assert not pattern.search(path.read_text()), f"{path} mentions AWS credentials"


def test_runtime_env_excludes_data_runs_and_environments():
    env = load_yaml(LOCAL / "runtime_env.yaml")
    assert set(env) <= {"excludes", "env_vars"}  # working_dir comes from --working-dir
    for needed in (".git/", ".venv/", "data/", "runs/", "out/", "outputs/"):
        assert needed in env["excludes"], needed
    assert env["env_vars"]["NO_ALBUMENTATIONS_UPDATE"] == "1"
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray requires string values


def test_the_aws_launcher_config_passes_the_validation_ray_up_runs():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load_yaml(AWS)
    assert raw["cluster_name"] and isinstance(raw["max_workers"], int)
    assert raw["provider"]["type"] == "aws" and raw["provider"]["region"]
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    for name, node in types.items():
        assert isinstance(node["resources"], dict) and node["node_config"]["InstanceType"], name
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name  # S3 via IAM
        if name != raw["head_node_type"]:
            assert 0 <= node["min_workers"] <= node["max_workers"], name
    workers = [n for name, n in types.items() if name != raw["head_node_type"]]
    assert sum(n["max_workers"] for n in workers) <= raw["max_workers"]
    # What `ray up` does before it talks to AWS: merge the provider defaults, then check Ray's JSON schema.
    validate_config(prepare_config(copy.deepcopy(raw)))
    assert any("segcore" in c and "<TAG>" in c for c in raw["setup_commands"])  # the project at a pinned tag
    assert all("RAY_AUTH_MODE=token" in c for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
               if "ray start" in c)


def test_the_aws_gpu_node_types_fit_the_cluster_configs():
    raw = load_yaml(AWS)
    train_cfg = load_config(REPO / "configs/cluster-train.yaml")
    seg_cfg = load_config(REPO / "configs/cluster-segment.yaml")
    t, s = train_cfg.train, seg_cfg.segment
    train, infer = raw["available_node_types"]["gpu.train"], raw["available_node_types"]["gpu.infer"]
    workers_per_node = train["resources"]["GPU"] / t.gpus_per_worker
    assert workers_per_node * train["max_workers"] >= t.num_workers
    assert workers_per_node * t.cpus_per_worker < train["resources"]["CPU"]  # CPUs left for data loading
    actors_per_node = infer["resources"]["GPU"] / s.gpus_per_actor
    assert actors_per_node * infer["max_workers"] >= s.actors
    assert actors_per_node * s.cpus_per_actor < infer["resources"]["CPU"]  # CPUs left for reading blocks
    assert train_cfg.s3.region == seg_cfg.s3.region == raw["provider"]["region"]


def pod_containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers and all(c["name"] and c["image"] for c in containers)
    return containers


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjobs_carry_the_fields_the_kuberay_crd_requires(path):
    job = load_yaml(path)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])  # a DNS-1123 label
    spec = job["spec"]
    assert spec["entrypoint"].strip() and spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["NO_ALBUMENTATIONS_UPDATE"] == "1"
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    images = {c["image"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in pod_containers(g["template"])}
    assert len(images) == 1  # one image: the head submits and drives what the workers run
    service_account = load_yaml(CLUSTER / "k8s" / "serviceaccount.yaml")
    assert service_account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:  # rayStartParams is a map[string]string in the CRD
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in group["rayStartParams"].items())
        assert group["template"]["spec"]["serviceAccountName"] == service_account["metadata"]["name"]  # IRSA
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        worker = pod_containers(group["template"])[0]
        limits, requests = worker["resources"]["limits"], worker["resources"]["requests"]
        assert int(limits["nvidia.com/gpu"]) >= 1 and requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == \
            limits["nvidia.com/gpu"]  # Kubernetes requires requests == limits for GPUs
        assert any(t["key"] == "nvidia.com/gpu" for t in group["template"]["spec"]["tolerations"])


def gpu_group(path: Path) -> tuple[int, int, float]:
    """(pods, GPUs per pod, CPUs per pod) of the RayJob's one GPU worker group."""
    (group,) = load_yaml(path)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return group["replicas"], int(limits["nvidia.com/gpu"]), float(limits["cpu"])


def test_the_rayjob_worker_pods_fit_the_cluster_configs():
    t = load_config(REPO / "configs/cluster-train.yaml").train
    pods, gpus, cpus = gpu_group(CLUSTER / "k8s" / "rayjob-train.yaml")
    assert t.use_gpu and pods * gpus == t.num_workers * t.gpus_per_worker
    assert gpus / t.gpus_per_worker * t.cpus_per_worker < cpus
    s = load_config(REPO / "configs/cluster-segment.yaml").segment
    pods, gpus, cpus = gpu_group(CLUSTER / "k8s" / "rayjob-segment.yaml")
    assert pods * gpus == s.actors * s.gpus_per_actor and gpus / s.gpus_per_actor * s.cpus_per_actor < cpus


def test_the_cluster_configs_load_with_their_sizes():
    train = load_config(REPO / "configs/cluster-train.yaml")
    assert train.model.backbone == "resnet50" and train.train.num_workers == 8 and train.train.use_gpu
    assert train.train.gpus_per_worker == 1 and train.train.precision == "bf16" and train.train.channels_last
    assert train.train.data_root.startswith("s3://") and train.train.run_dir.startswith("s3://")
    seg = load_config(REPO / "configs/cluster-segment.yaml").segment
    assert seg.gpus_per_actor == 1 and seg.actors >= 1 and seg.precision == "bf16"


def test_the_image_and_the_launcher_use_the_ray_of_the_rayjobs():
    dockerfile = (CLUSTER / "docker" / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    version = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py\d+-gpu", base).group(1)
    assert version == ray.__version__  # the cluster runs the Ray that submits to it
    for path in RAYJOBS:
        assert load_yaml(path)["spec"]["rayClusterSpec"]["rayVersion"] == version
    docker = load_yaml(AWS)["docker"]
    assert {docker["head_image"].split(":")[1].split("-")[0], docker["worker_image"].split(":")[1].split("-")[0]} == \
        {version}
    assert re.search(rf"^WORKDIR {IMAGE_ROOT.rstrip('/')}$", dockerfile, re.M)
    for part in ("segcore", "jobs", "configs"):  # what the RayJob entrypoints run from the image
        assert re.search(rf"^COPY .*\b{part} \./{part}$", dockerfile, re.M), part


def readme_commands() -> list[list[str]]:
    """Every shell command in README.md's bash blocks, as argv (continuations joined, comments dropped)."""
    text = (CLUSTER.parent / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # leading VAR=value assignments
                argv = argv[1:]
            if argv:
                commands.append(argv)
    return commands


def job_invocations() -> list[tuple[str, str, list[str]]]:
    """(where, job script relative to the repo, its arguments) for every job the cluster files and README run."""
    found = []
    for path in RAYJOBS:
        argv = shlex.split(load_yaml(path)["spec"]["entrypoint"])
        assert argv[0] == "python" and argv[1].startswith(IMAGE_ROOT), path
        found.append((path.name, argv[1][len(IMAGE_ROOT):], [a.replace(IMAGE_ROOT, "", 1) for a in argv[2:]]))
    for argv in readme_commands():
        name = Path(argv[0]).name
        if name in JOB_SCRIPTS:
            found.append(("README", JOB_SCRIPTS[name], argv[1:]))
        elif name == "submit.sh":
            found.append(("README", argv[1], argv[2:]))
        elif Path(argv[0]).name == "ray" and argv[1:3] == ["job", "submit"]:
            rest = argv[argv.index("--") + 1:]
            assert rest[0] == "python", argv
            found.append(("README", rest[1], rest[2:]))
    return found


@pytest.fixture(scope="module")
def job_help() -> dict[str, str]:
    """`python jobs/X.py --help` of every job script, run side by side (each imports Ray: seconds apiece)."""
    scripts = sorted({script for _, script, _ in job_invocations()})
    procs = {s: subprocess.Popen([sys.executable, str(REPO / s), "--help"], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for s in scripts if (REPO / s).is_file()}
    return {s: p.communicate(timeout=300)[0] for s, p in procs.items()}


def test_every_job_command_names_an_existing_script_config_flags_and_settings(job_help):
    invocations = job_invocations()
    sources = {(where, script) for where, script, _ in invocations}
    assert {("README", "jobs/prepare.py"), ("README", "jobs/train.py"), ("README", "jobs/segment.py"),
            ("rayjob-train.yaml", "jobs/train.py"), ("rayjob-segment.yaml", "jobs/segment.py")} <= sources
    for where, script, args in invocations:
        assert script in job_help, f"{where}: {script} does not exist"
        for arg in args:
            if arg.startswith("--"):
                flag = arg.split("=")[0]
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", job_help[script]), \
                    f"{where}: {script} has no {flag}"
        options = [(a, b) for a, b in itertools.pairwise(args) if a in ("--config", "--set")]
        config = next((b for a, b in options if a == "--config"), None)
        assert config is None or (REPO / config).is_file(), f"{where}: {config} does not exist"
        load_config(REPO / config if config else None, [b for a, b in options if a == "--set"])


def test_every_repository_path_the_cluster_files_name_exists():
    pattern = re.compile(r"(?<![\w/<.-])((?:cluster|configs|jobs|scripts|segcore)/[\w./*-]*\w)")
    for path in cluster_files():
        for name in pattern.findall(path.read_text()):
            name = name.split("<")[0]
            assert (REPO / name).exists() or list(REPO.glob(name)), f"{path.relative_to(REPO)} names {name}"


# ---------------------------------------------------------------------------------------- end to end (local head)

def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port_range(size: int) -> int:
    """The first of `size` consecutive free ports below the ephemeral range, for Ray's worker ports."""
    for _ in range(50):
        base = 20000 + secrets.randbelow(100) * 100
        try:
            socks = []
            for port in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range for Ray workers")


class Head:
    """A local head in its own temp dir on free ports, driven through the cluster/local scripts."""

    def __init__(self, temp_dir: Path, dashboard_port: int):
        token = temp_dir / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {**os.environ, "SEGCORE_RAY_DIR": str(temp_dir / "ray"), "RAY_DASHBOARD_PORT": str(dashboard_port),
                    "RAY_AUTH_TOKEN_PATH": str(token), "NO_ALBUMENTATIONS_UPDATE": "1"}
        for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):  # the scripts decide these
            self.env.pop(name, None)

    def command(self, script: str, *args: str) -> list[str]:
        return [str(LOCAL / script), *map(str, args)]

    def run(self, script: str, *args: str, timeout: float = 300) -> str:
        """Run cluster/local/<script>; fails the test with the end of its output unless it exits 0."""
        result = subprocess.run(self.command(script, *args), cwd=REPO, env=self.env, timeout=timeout,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stdout[-4000:]}"
        return result.stdout


@pytest.fixture(scope="module")
def head():
    temp_dir = Path(tempfile.mkdtemp(prefix="segray-", dir="/tmp"))  # short: Ray's socket paths live under it
    gcs, dashboard, client, node_manager, object_manager, agent_grpc, metrics, runtime_env = free_ports(8)
    workers = free_port_range(100)
    local = Head(temp_dir, dashboard)
    try:
        local.run("start.sh", "--num-cpus=4", "--object-store-memory=500000000", f"--port={gcs}",
                  f"--ray-client-server-port={client}", f"--node-manager-port={node_manager}",
                  f"--object-manager-port={object_manager}", f"--dashboard-agent-grpc-port={agent_grpc}",
                  f"--metrics-export-port={metrics}",
                  f"--runtime-env-agent-port={runtime_env}", f"--min-worker-port={workers}",
                  f"--max-worker-port={workers + 99}", timeout=180)
        yield local
    finally:
        local.run("stop.sh", timeout=60)  # only this head's processes, found by its temp dir
        leftovers = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert str(temp_dir) not in leftovers, "Ray processes of the test head survived stop.sh"


def synth_city(output: Path, size: int) -> Path:
    subprocess.run([sys.executable, "-m", "segcore.synth", "--width", str(size), "--height", str(size), "--seed", "0",
                    "--output", str(output)], cwd=REPO, check=True, capture_output=True, timeout=300)
    return output


def assert_succeeded(log: str) -> None:
    assert re.search(r"Job '\S+' succeeded", log), log[-4000:]


@pytest.fixture(scope="module")
def submitted(head, patch_set, tmp_path_factory):
    """A segment job and a one-epoch training job submitted to the head at once, as jobs share a cluster, and
    followed to their ends through submit-segment.sh and submit-train.sh (wrappers of submit.sh, which the
    README's prepare step calls). The head's 4 logical CPUs hold both jobs' actors and tasks side by side."""
    root = tmp_path_factory.mktemp("submitted")
    city = synth_city(root / "city", 512)
    torch.manual_seed(0)
    model_cfg = ModelConfig(backbone="resnet18", decoder_width=16)
    checkpoint = root / "model.pt"
    Checkpoint(model_cfg, InputConfig(), build_model(**dataclasses.asdict(model_cfg)).state_dict(),
               threshold=0.5).save(str(checkpoint))
    out, run = root / "out", root / "run"
    scripts = {
        "submit-segment.sh": ("--config", "configs/segment.yaml", "--input", city / "image.tif",
                              "--checkpoint", checkpoint, "--output", out, "--labels", city / "labels.tif",
                              "--set", "model.backbone=resnet18", "--set", "segment.tile_size=128",
                              "--set", "segment.overlap=16", "--set", "segment.block_size=256",
                              "--set", "segment.batch_size=8", "--set", "segment.cpus_per_actor=1",
                              "--set", "segment.preview_size=256"),
        "submit-train.sh": ("--config", "configs/dev.yaml", "--set", f"train.data_root={patch_set}",
                            "--set", f"train.run_dir={run}", "--set", "train.tile_size=64", "--set", "train.epochs=1",
                            "--set", "train.batch_size=4", "--set", "train.cpus_per_worker=0.5",
                            "--set", "model.decoder_width=16"),
    }
    results = jobs.run_side_by_side([head.command(script, *args) for script, args in scripts.items()], logs=root,
                                    env=head.env, timeout=300)
    logs = {script: result.stdout + result.stderr for script, result in zip(scripts, results, strict=True)}
    for script, result in zip(scripts, results, strict=True):
        assert result.returncode == 0, f"{script} exited {result.returncode}:\n{logs[script][-4000:]}"
    return SimpleNamespace(city=city, out=out, run=run, logs=logs)


@pytest.mark.cluster
def test_a_segment_job_submitted_to_the_local_head_writes_the_mask(submitted):
    assert_succeeded(submitted.logs["submit-segment.sh"])
    summary = json.loads((submitted.out / "summary.json").read_text())
    assert summary["ok"] == 1 and summary["failed"] == 0
    (entry,) = summary["inputs"]
    with rasterio.open(submitted.city / "image.tif") as src, \
            rasterio.open(submitted.out / entry["key"] / "mask.tif") as mask:
        assert (mask.width, mask.height, mask.crs, mask.transform) == (512, 512, src.crs, src.transform)
    assert "iou" in json.loads((submitted.out / entry["key"] / "metrics.json").read_text())


@pytest.mark.cluster
def test_a_one_epoch_training_job_submitted_to_the_local_head_writes_the_run(submitted):
    assert_succeeded(submitted.logs["submit-train.sh"])
    assert (submitted.run / "checkpoints" / "best.pt").stat().st_size > 0
    with open(submitted.run / "metrics.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1"]

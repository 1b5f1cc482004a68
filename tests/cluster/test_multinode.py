"""A simulated multi-node cluster on this machine (ray.cluster_utils.Cluster, marker `cluster`): a head with no
task resources, two nodes that declare one GPU each (torch falls back to the CPU there) and a CPU node. Jobs
run as subprocesses whose driver joins it on the head, with imagery, checkpoints and outputs on the loopback S3
server. Placement is read from Ray's own tables (actors, task events, jobs); nodes are removed and added
mid-run."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from tests import jobs
from tests.conftest import REPO
from tests.faults.common import SEG
from tests.helpers import TILE, s3_block_count, wait_for
from tests.inputs import write_patch_set

pytestmark = pytest.mark.cluster

STORE = 150 * 1024 * 1024  # each node's object store: small, as Ray's own multi-node tests
# Inference actors take a whole (declared) GPU each; the CPU stages fractions of the nodes' one CPU apiece.
ON_NODES = ("segment.actors=2", "segment.gpus_per_actor=1", "segment.cpus_per_actor=0.25", "segment.readers=1",
            "segment.writers=1", "segment.cpus_per_reader=0.25", "segment.cpus_per_writer=0.25",
            "segment.cpus_per_assembly=0.25")


def gpu_node(cluster, name: str):
    return cluster.add_node(num_cpus=1, num_gpus=1, resources={name: 1}, object_store_memory=STORE)


@pytest.fixture(scope="module")
def sim():
    """The cluster, its nodes by role, and the environment of a job whose driver joins it."""
    import ray._private.utils
    from ray.cluster_utils import Cluster

    address_file = Path(ray._private.utils.get_ray_address_file(None))
    before = address_file.read_text() if address_file.exists() else None
    # The session's ray.init() sets RAY_AUTH_MODE=token in this process, whose environment every node started
    # here inherits; the cluster runs without token authentication whichever test ran first.
    environment = pytest.MonkeyPatch()
    environment.delenv("RAY_AUTH_MODE", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, resources={"head": 1},
                                                                include_dashboard=False, object_store_memory=STORE))
    try:
        gpus = [gpu_node(cluster, "gpu_a"), gpu_node(cluster, "gpu_b")]
        cpu = cluster.add_node(num_cpus=1, resources={"cpu_node": 1}, object_store_memory=STORE)
        cluster.wait_for_nodes()
        env = jobs.job_env(None, ray_address=cluster.address,
                           **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
        env.pop("RAY_AUTH_MODE")  # this cluster runs without token authentication
        yield SimpleNamespace(cluster=cluster, env=env, head=cluster.head_node.node_id, gpus=gpus, cpu=cpu)
    finally:
        cluster.shutdown()
        environment.undo()
        # Cluster() pointed `ray.init()` without an address at itself; the session's other Rays never read it.
        if before is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(before)


def start_job(sim, name: str, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(jobs.job(name, *args), env=sim.env, cwd=REPO, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> str:
    proc.wait(timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def actors(sim, since: float) -> dict[str, set[str]]:
    """Node ids of the actors started since `since` (a time.time()), by class name."""
    found: dict[str, set[str]] = {}
    for actor in sim.cluster.global_state.actor_table(None).values():
        if actor["StartTime"] / 1000 >= since and actor["Address"]["NodeID"]:
            found.setdefault(actor["ActorClassName"], set()).add(actor["Address"]["NodeID"])
    return found


@pytest.fixture(scope="module")
def scene(sim, cities, tiny_checkpoint, s3_server, tmp_path_factory):
    """On S3: a 384 x 256 city (12 blocks of 128 with the SEG tiles), the tiny checkpoint and a patch set."""
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket="multinode")
    city = cities(384, 256, seed=3)
    client.upload_file(str(city.image), "multinode", "in/city.tif")
    client.upload_file(tiny_checkpoint, "multinode", "model.pt")
    patches = write_patch_set(tmp_path_factory.mktemp("patches"), counts=(("train", 16), ("val", 4)))
    for path in patches.rglob("*.png"):
        client.upload_file(str(path), "multinode", f"patches/{path.relative_to(patches).as_posix()}")
    return SimpleNamespace(endpoint=s3_server, client=client, city=city)


def segment_args(scene, out: str, *extra: str) -> list[str]:
    args = ["--input", "s3://multinode/in/city.tif", "--checkpoint", "s3://multinode/model.pt", "--output", out]
    for item in (*SEG, "segment.block_size=128", *ON_NODES, f"s3.endpoint_url={scene.endpoint}", *extra):
        args += ["--set", item]
    return args


def train_args(scene, run_dir: str, *extra: str) -> list[str]:
    """Two workers with a (declared) GPU each, on the gloo backend: torch sees no CUDA on these nodes."""
    settings = ("model.backbone=resnet18", "model.decoder_width=16", f"train.tile_size={TILE}", "train.batch_size=4",
                "train.num_workers=2", "train.use_gpu=true", "train.gpus_per_worker=1", "train.cpus_per_worker=0.25",
                "train.backend=gloo", "train.precision=fp32", "train.channels_last=false", "train.epochs=1",
                "train.data_root=s3://multinode/patches", f"train.run_dir={run_dir}",
                f"s3.endpoint_url={scene.endpoint}", *extra)
    return [arg for item in settings for arg in ("--set", item)]


def mask(scene, out: str) -> bytes:
    key = out[len("s3://multinode/"):] + "/city/mask.tif"
    return scene.client.get_object(Bucket="multinode", Key=key)["Body"].read()


def test_local_paths_are_refused_on_several_nodes_unless_declared_shared(sim, scene, tmp_path):
    out = tmp_path / "out"
    procs = {
        "segment": start_job(sim, "segment", *segment_args(scene, str(out)), log=tmp_path / "segment.log"),
        "train": start_job(sim, "train", *train_args(scene, str(tmp_path / "run")), log=tmp_path / "train.log"),
    }
    for name, proc in procs.items():
        proc.wait(timeout=300)
        lines = [line for line in (tmp_path / f"{name}.log").read_text().splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, (name, lines)
        what = {"segment": f"--output {out}", "train": f"train.run_dir {tmp_path / 'run'}"}[name]
        assert lines == [f"error: {what} is a local path, but this Ray cluster has 4 nodes that do not share this "
                         "machine's disk: use an s3:// path, or set storage.shared_fs=true if every node mounts it "
                         "at the same path"], lines
    # Nothing ran: segment's planning only checked that its output is writable (.work/settings.json).
    assert [p.name for p in out.rglob("*")] == [".work", "settings.json"] and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def placed_segment(sim, scene, tmp_path_factory):
    """An undisturbed segment run into a local output declared shared (this machine's disk is every simulated
    node's): its mask and where Ray placed its work."""
    out, log, since = tmp_path_factory.mktemp("placed") / "out", tmp_path_factory.mktemp("log") / "log", time.time()
    finish(start_job(sim, "segment", *segment_args(scene, str(out), "storage.shared_fs=true"), log=log), log)
    placed = actors(sim, since)
    return SimpleNamespace(mask=(out / "city" / "mask.tif").read_bytes(), actors=placed,
                           assembly={node for name, nodes in placed.items() if "Assembler" in name for node in nodes})


def test_segment_runs_inference_on_the_gpu_nodes_and_the_cpu_stages_beside_it(sim, placed_segment):
    placed = placed_segment.actors
    (segmenters,) = [nodes for name, nodes in placed.items() if "BlockSegmenter" in name]
    assert segmenters == {node.node_id for node in sim.gpus}  # one actor per declared GPU, there only
    cpu_stages = {node for name, nodes in placed.items() if "BlockReader" in name or "BlockWriter" in name
                  for node in nodes}
    assert cpu_stages and placed_segment.assembly and sim.head not in cpu_stages | placed_segment.assembly


def test_a_gpu_node_lost_mid_segment_and_one_added_give_the_same_mask(sim, scene, placed_segment, tmp_path):
    log = tmp_path / "log"
    proc = start_job(sim, "segment", *segment_args(scene, "s3://multinode/lost"), log=log)
    try:
        assert wait_for(lambda: s3_block_count(scene.client, "multinode", "lost") >= 3 or proc.poll() is not None,
                        timeout=300)
        assert proc.poll() is None, log.read_text()[-3000:]
        lost = sim.gpus.pop(0)
        sim.cluster.remove_node(lost)
        sim.gpus.append(gpu_node(sim.cluster, "gpu_c"))  # a replacement joins while the run goes on
        text = finish(proc, log)
    finally:
        proc.kill()
    assert "1 input(s) segmented, 0 failed" in text, text[-3000:]
    assert mask(scene, "s3://multinode/lost") == placed_segment.mask


def test_training_spreads_over_the_gpu_nodes_and_survives_losing_one(sim, scene, tmp_path):
    log, run_dir, since = tmp_path / "log", "s3://multinode/runs/lost", time.time()
    proc = start_job(sim, "train", *train_args(scene, run_dir, "train.epochs=2", "train.max_failures=2"), log=log)
    try:
        # Epoch 1's checkpoint counts once Ray Train's controller has registered it (its snapshot file on S3);
        # the node goes in epoch 2.
        assert wait_for(lambda: registered(scene, "runs/lost/") or proc.poll() is not None, timeout=300, every=0.1)
        assert proc.poll() is None, log.read_text()[-3000:]
        workers = next(nodes for name, nodes in actors(sim, since).items() if "RayTrainWorker" in name)
        assert workers == {node.node_id for node in sim.gpus}  # one worker on each GPU node
        lost = sim.gpus.pop(0)
        sim.cluster.remove_node(lost)
        sim.gpus.append(gpu_node(sim.cluster, "gpu_d"))
        text = finish(proc, log, timeout=600)
    finally:
        proc.kill()
    assert "restarted after a worker failure: continuing from the checkpoint of epoch" in text, text[-3000:]
    history = scene.client.get_object(Bucket="multinode", Key="runs/lost/metrics.csv")["Body"].read().decode()
    assert [int(row.split(",")[0]) for row in history.splitlines()[1:]] == [1, 2]
    assert driver_nodes(sim, since) == {sim.head}  # the job's driver ran on the head


def registered(scene, prefix: str) -> bool:
    listing = scene.client.list_objects_v2(Bucket="multinode", Prefix=prefix)
    return any(entry["Key"].endswith("/checkpoint_manager_snapshot.json") for entry in listing.get("Contents", []))


def driver_nodes(sim, since: float) -> set[str]:
    """Node ids of the drivers of the jobs started since `since` (Ray's job table)."""
    from ray.core.generated import gcs_pb2

    accessor = sim.cluster.global_state._connect_and_get_accessor()
    entries = [gcs_pb2.JobTableData.FromString(raw) for raw in accessor.get_job_table(
        skip_submission_job_info_field=True, skip_is_running_tasks_field=True)]
    return {entry.driver_address.node_id.hex() for entry in entries if entry.start_time / 1000 >= since}

"""Jobs as subprocesses (`python jobs/<job>.py`), each with a Ray of its own or joining the session's, and
the means to find, kill and scan what they leave: every process is found by a marker in its environment
(never by name), and every file under given roots is searched for secrets."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from tests.conftest import REPO


def job_env(ray_tmp: Path | None, *, ray_address: str | None = None, **extra: str) -> dict:
    """The environment of a job subprocess. Without `ray_address` it starts a Ray of its own: RAY_ADDRESS=local
    makes ray.init() start a new local instance even where another cluster could be found (a `ray start` head
    writes its address to <temp>/ray/ray_current_cluster, which ray.init() would otherwise join), and RAY_TMPDIR
    gives that instance its own session and log folder, which also marks every process of it. With it, the job
    joins that running cluster, as under `ray job submit`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "AWS_"))}
    env.update({"RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1", "AWS_DEFAULT_REGION": "us-east-1", **extra})
    # A client of a running cluster sends the token (~/.ray/auth_token) only when RAY_AUTH_MODE=token.
    env.update({"RAY_ADDRESS": ray_address, "RAY_AUTH_MODE": "token"} if ray_address else
               {"RAY_ADDRESS": "local", "RAY_TMPDIR": str(ray_tmp)})
    return env


def joining(ray, **extra: str) -> dict:
    """The environment of a job subprocess that joins the session's Ray (the `ray_local` fixture)."""
    return job_env(None, ray_address=ray.get_runtime_context().gcs_address, **extra)


def job(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / f"{name}.py"), *[str(a) for a in args]]


def run_job(name: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_job_command(job(name, *args), env=env, timeout=timeout)


def run_job_command(command: list[str], *, cwd: Path = REPO, env: dict | None = None,
                    timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def run_side_by_side(commands: list[list[str]], *, logs: Path, cwd: Path = REPO, env: dict | None = None,
                     timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Run `commands` at once (as jobs share a cluster), each writing to files under `logs` (a full pipe would
    stall it); their results in order, once all have ended."""
    procs, files = [], []
    for i, command in enumerate(commands):
        out, err = logs / f"command{i}.out", logs / f"command{i}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            procs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True))
        files.append((out, err))
    for proc in procs:
        proc.wait(timeout=timeout)
    return [subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())
            for proc, (out, err) in zip(procs, files, strict=True)]


def pids_marked(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (e.g. a RAY_TMPDIR value unique to one test)."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_marked(marker: str, timeout: float = 30) -> list[int]:
    """SIGKILL every process carrying `marker` in its environment, until none is left; returns their pids."""
    killed: list[int] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = [pid for pid in pids_marked(marker) if _alive(pid)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    return killed


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def short_tmp(prefix: str) -> Path:
    """A short folder under /tmp: Ray's socket paths must stay under 108 characters."""
    path = Path("/tmp") / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def files_under(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if Path(root).exists() for p in Path(root).rglob("*")
                  if p.is_file() and not p.is_symlink())


def leaks(secrets: Iterable[str], texts: dict[str, bytes]) -> list[tuple[str, str]]:
    """(where, secret) for every secret found in any of `texts` ({name: bytes})."""
    return [(name, secret) for name, data in texts.items() for secret in secrets if secret.encode() in data]

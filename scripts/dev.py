"""Set up the project's virtual environment if needed, then run the demo or the tests.

    python3 scripts/dev.py demo   # generate a sample city, prepare, train, segment (CPU, no downloads)
    python3 scripts/dev.py test   # the whole test suite
    python3 scripts/dev.py lint   # ruff check and mypy (settings in pyproject.toml)
Extra arguments are passed on (to pytest for `test`, to jobs/demo.py for `demo`).
"""
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("SEGCORE_VENV", ROOT / ".venv"))
PY = VENV / "bin" / "python"


def ensure_venv() -> None:
    """Create the venv and install the project with its test extras; redo only when pyproject.toml changes."""
    stamp = VENV / ".installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    stamp.write_text(want)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "lint", "setup"):
        print(__doc__)
        return 2
    ensure_venv()
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "setup":
        return 0
    if command == "lint":
        ruff = subprocess.call([str(PY), "-m", "ruff", "check", "segcore", "jobs", "tests", "benchmarks", "scripts"],
                               cwd=ROOT)
        return subprocess.call([str(PY), "-m", "mypy"], cwd=ROOT) or ruff
    args = [str(PY), str(ROOT / "jobs" / "demo.py"), *rest] if command == "demo" else [str(PY), "-m", "pytest", *rest]
    return subprocess.call(args, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())

# Sourced by the other cluster/local scripts: which `ray`, which head, which auth mode, in one place.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${SEGCORE_VENV:-$ROOT/.venv}"
# The head runs job entrypoints (`python jobs/...`) with the PATH it was started with, so the
# project's venv goes first: its python has segcore's dependencies, and its ray is the head's.
if [[ -x "$VENV/bin/ray" ]]; then
    export PATH="$VENV/bin:$PATH"
fi
# Ray 2.60 turns token authentication on for local clusters (`ray start` does whenever a token
# exists), but clients send the token only when RAY_AUTH_MODE=token: set it for the head and for every
# client, so both sides agree. The token is ~/.ray/auth_token, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH
# when set. RAY_AUTH_MODE=disabled opts out.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
# The head's own temp dir (sessions, logs, sockets), so that stop.sh stops this head and no other
# Ray on the machine.
RAY_DIR="${SEGCORE_RAY_DIR:-/tmp/segcore-ray}"
DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
# The jobs API to submit to; RAY_ADDRESS points the submit scripts at another cluster.
ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:$DASHBOARD_PORT}"

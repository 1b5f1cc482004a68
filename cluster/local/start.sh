#!/usr/bin/env bash
# Start a single-node Ray head whose dashboard (the jobs API of `ray job submit`) listens on loopback.
#   cluster/local/start.sh [more `ray start` flags, e.g. --num-cpus=2 --port=6380]
# Environment: RAY_DASHBOARD_PORT (default 8265), SEGCORE_RAY_DIR (temp dir, default /tmp/segcore-ray).
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [[ "$RAY_AUTH_MODE" == token ]]; then
    ray get-auth-token --generate >/dev/null  # creates ~/.ray/auth_token only if there is no token yet
fi
mkdir -p "$RAY_DIR"
# Ray's own helpers in the workers (e.g. Ray Train's placement group cleaner) find the cluster through
# RAY_ADDRESS or /tmp/ray; with our temp dir, and maybe other Rays on the machine, they need the former.
gcs_port=6379  # `ray start`'s default, unless the flags say otherwise
for ((i = 1; i <= $#; i++)); do
    case "${!i}" in
        --port=*) gcs_port="${!i#--port=}" ;;
        --port) j=$((i + 1)); gcs_port="${!j}" ;;
    esac
done
# The dashboard agent's fixed default port (52365) clashes with any other Ray on the machine, and
# without its agent a head cannot run jobs: let it pick a free port (the dashboard finds it via GCS).
RAY_ADDRESS="127.0.0.1:$gcs_port" ray start --head --temp-dir="$RAY_DIR" --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASHBOARD_PORT" --dashboard-agent-listen-port=0 --disable-usage-stats "$@"
echo "Ray head is up: RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RAY_AUTH_MODE=$RAY_AUTH_MODE"

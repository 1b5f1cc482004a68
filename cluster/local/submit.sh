#!/usr/bin/env bash
# Submit one of the project's jobs to the Ray head at RAY_ADDRESS (default http://127.0.0.1:8265)
# and follow its log until it ends (Ctrl-C stops following, not the job):
#   cluster/local/submit.sh jobs/<job>.py [its arguments ...]
# The checkout is uploaded as the job's working directory (minus runtime_env.yaml's excludes), so
# relative paths in the arguments resolve inside that temporary copy: pass absolute paths or s3://.
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [[ $# -lt 1 ]]; then
    sed -n '2,6s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
cd "$ROOT"
exec ray job submit --address "$ADDRESS" --working-dir . --runtime-env cluster/local/runtime_env.yaml \
    -- python "$@"

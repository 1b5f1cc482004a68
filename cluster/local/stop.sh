#!/usr/bin/env bash
# Stop the head that start.sh started (the one using SEGCORE_RAY_DIR, default /tmp/segcore-ray), with
# its workers and running jobs; other Ray instances on the machine are left alone.
#   cluster/local/stop.sh          # this head
#   cluster/local/stop.sh --all    # `ray stop`: every Ray started with `ray start` on this machine
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [[ "${1:-}" == --all ]]; then
    exec ray stop
fi
dir="$(cd "$RAY_DIR" 2>/dev/null && pwd)" || { echo "no Ray head in $RAY_DIR"; exit 0; }

# Ray's own processes name the temp dir in their command lines; workers and job drivers descend from them.
head_tree() {
    ps -eww -o pid=,ppid=,args= | D="$dir" SELF=$$ awk '
        { pid[NR] = $1; ppid[NR] = $2
          named = index($0, ENVIRON["D"] "/") || index($0 " ", "=" ENVIRON["D"] " ")
          if (named && $1 != ENVIRON["SELF"] && $2 != ENVIRON["SELF"]) hit[$1] = 1 }
        END { do { n = 0
                   for (i = 1; i <= NR; i++) if (!(pid[i] in hit) && (ppid[i] in hit)) { hit[pid[i]] = 1; n++ }
              } while (n)
              for (p in hit) print p }'
}

# Waits up to $1 half-seconds for $pids to exit; succeeds, leaving the survivors in $alive, if some did not.
still_alive() {
    for _ in $(seq "$1"); do
        alive="$(ps -o pid=,stat= -p "${pids//$'\n'/,}" | awk '$2 !~ /^Z/ {print $1}' || true)"  # zombies are gone
        [[ -z "$alive" ]] && return 1
        sleep 0.5
    done
}

pids="$(head_tree)"
if [[ -z "$pids" ]]; then
    echo "no Ray head of $dir is running"
    exit 0
fi
# shellcheck disable=SC2086  # one pid per word
kill -TERM $pids 2>/dev/null || true
if still_alive 10; then  # gcs_server and the autoscaler monitor may ignore SIGTERM
    echo "still running 5 s after SIGTERM, killing:" $alive
    # shellcheck disable=SC2086
    kill -KILL $alive 2>/dev/null || true
    if still_alive 10; then
        echo "could not stop:" $alive >&2
        exit 1
    fi
fi
echo "stopped the Ray head of $dir ($(wc -w <<<"$pids") processes)"

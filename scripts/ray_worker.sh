#!/usr/bin/env bash
# Join this node to the Ray head started by scripts/ray_head.sh:  scripts/ray_worker.sh HEAD_IP
set -euo pipefail
HEAD="${1:?usage: ray_worker.sh HEAD_IP [extra ray start options]}"
shift
exec ray start --address "${HEAD}:${RAY_PORT:-6379}" "$@"

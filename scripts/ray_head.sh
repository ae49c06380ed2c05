#!/usr/bin/env bash
# Start the Ray head on this host (plain hosts). Then on every other node:
#   scripts/ray_worker.sh <this host's IP>
# and run the flow here:  tops run --config configs/qwen32b-gsm8k.yaml   (cluster.address: auto)
# Every node needs the same tops environment at the same path and the run folder (run.root) on
# storage every node sees (NFS, Lustre, ...).
set -euo pipefail
PORT="${RAY_PORT:-6379}"
exec ray start --head --port "$PORT" "$@"

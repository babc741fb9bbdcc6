#!/usr/bin/env bash
# From nothing to a finished demo: environment, embedded AiiDA profile (SQLite + ZeroMQ), daemon, and the demo job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
# Keep the whole AiiDA configuration (profile, storage, daemon logs) inside the project folder.
export AIIDA_PATH=${AIIDA_PATH:-$PWD}
aiida-alml setup --profile-name alml
verdi -p alml daemon status >/dev/null 2>&1 || verdi -p alml daemon start 1
aiida-alml demo -p alml "$@"
echo "The daemon keeps running; stop it with: AIIDA_PATH=$AIIDA_PATH verdi -p alml daemon stop"
echo "(On a busy machine that can print FAILED although the daemon stopped: verdi waits only daemon.timeout = 2 s"
echo " for its answer. Raise it once with: AIIDA_PATH=$AIIDA_PATH verdi -p alml config set daemon.timeout 20)"

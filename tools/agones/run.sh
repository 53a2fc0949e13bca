#!/usr/bin/env bash
# Runs a script of this directory (the fake Agones SDK server) in its virtual environment:
#   tools/agones/run.sh SCRIPT.py ARGS...
# grpcio and grpcio-tools (requirements.txt, pinned) go into a virtual environment under
# target/, made once and remade when the requirements change. The Agones test calls this; so
# does .ci/run's setup (no arguments: only the environment).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${APEXSIM_AGONES_VENV:-$here/../../target/agones-venv}
. "$here/../venv.sh"
venv_ready "$venv" "$here/requirements.txt"
[ $# -eq 0 ] && exit 0
script=$1
shift
exec "$venv/bin/python" -u "$here/$script" "$@"

#!/usr/bin/env bash
# Runs the notebooks headless against an archive (a data directory apexsim wrote):
#   notebooks/run.sh ARCHIVE
# Their requirements (requirements.txt, pinned) go into a virtual environment under target/,
# made once and remade when the requirements change. Executed copies and their figures are
# written to target/notebooks/. A failing cell fails the run.
set -euo pipefail
archive=$(realpath "${1:?usage: notebooks/run.sh ARCHIVE}")
cd "$(dirname "$0")"
venv=${APEXSIM_NOTEBOOK_VENV:-../target/notebook-venv}
. ../tools/venv.sh
venv_ready "$venv" requirements.txt
"$venv/bin/python" run.py "$archive" ../target/notebooks ./*.ipynb

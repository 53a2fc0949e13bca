#!/usr/bin/env bash
# Spark and DuckDB over an archive's Hive-partitioned laps, checked against apexsim's own
# listing and analysis of it (check.py):
#   tools/engines/run.sh APEXSIM ARCHIVE
# PySpark 4.3 (it runs on the machine's Java 17; 4.0's vectorized reader refuses the lap files'
# BYTE_STREAM_SPLIT floats) and DuckDB go into a virtual environment under
# target/, made once and remade when requirements.txt changes.
set -euo pipefail
binary=$(realpath "${1:?usage: tools/engines/run.sh APEXSIM ARCHIVE}")
archive=$(realpath "${2:?usage: tools/engines/run.sh APEXSIM ARCHIVE}")
cd "$(dirname "$0")"
venv=${APEXSIM_ENGINES_VENV:-../../target/engines-venv}
. ../venv.sh
venv_ready "$venv" requirements.txt
"$venv/bin/python" check.py "$binary" "$archive"

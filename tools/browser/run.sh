#!/usr/bin/env bash
# Runs a browser check (a Python Playwright script of this directory) in headless Chromium:
#   tools/browser/run.sh SCRIPT.py ARGS...
# Debian's chromium (never a downloaded browser) is installed with apt-get when missing, and
# Playwright (requirements.txt, pinned) into a virtual environment under target/, made once
# and remade when the requirements change. The tests call this; so does .ci/run's setup.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${APEXSIM_BROWSER_VENV:-$here/../../target/browser-venv}
if [ ! -x /usr/bin/chromium ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >&2
fi
. "$here/../venv.sh"
venv_ready "$venv" "$here/requirements.txt"
[ $# -eq 0 ] && exit 0
script=$1
shift
exec "$venv/bin/python" "$here/$script" "$@"

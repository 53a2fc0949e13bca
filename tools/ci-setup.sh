#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, from Debian's packages:
#   promtool (package prometheus): the server test lints `/metrics` with it.
# Run by .ci/run; safe to run again (does nothing when everything is there).
set -euo pipefail
need=()
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

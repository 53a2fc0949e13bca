#!/usr/bin/env bash
# Runs Debian's redis-server with the given arguments, installing it with apt-get first when
# it is missing (the Redis publisher's tests start one per test through this):
#   tools/redis/run.sh --port 6390 --dir /tmp/x ...
set -euo pipefail
if ! command -v redis-server >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # Tests start servers side by side: one install at a time.
    exec 9>"${TMPDIR:-/tmp}/apexsim-redis-install.lock"
    flock 9
    if ! command -v redis-server >/dev/null; then
        $sudo apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >&2
    fi
    exec 9>&-
fi
exec redis-server "$@"

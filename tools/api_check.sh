#!/usr/bin/env bash
# schemathesis against the REST API's served OpenAPI document: a race is archived in a fresh
# data directory, `apexsim api` serves it on a free port, and schemathesis (pinned in
# tools/schemathesis-requirements.txt, installed in a venv under target/) generates requests
# for every operation and checks every response: no 5xx, status codes, content types and
# bodies as the document declares them, bad input refused, valid input accepted.
#   tools/api_check.sh [APEXSIM_BINARY]   (default: target/debug/apexsim, which the tests build)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/debug/apexsim}")
venv=${APEXSIM_SCHEMATHESIS_VENV:-target/schemathesis-venv}
req=tools/schemathesis-requirements.txt
. tools/venv.sh
venv_ready "$venv" "$req"
data=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT
"$bin" --data "$data" race --fast --track oval_simple --cars 3 --laps 2 --format json >/dev/null
# A writer's token, so that the writing routes are tried beyond their 401.
token=schemathesis-writer-token
printf '[api.tokens]\nschemathesis = "%s"\n' "$token" >"$data/server.toml"
RUST_LOG=apexsim=info "$bin" --data "$data" api --bind 127.0.0.1:0 --config "$data/server.toml" \
    >/dev/null 2>"$data/api.log" &
pid=$!
addr=""
for _ in $(seq 1 100); do
    addr=$(grep -o 'http=[0-9.:]*' "$data/api.log" | head -1 | cut -d= -f2 || true)
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "apexsim api did not start:"; cat "$data/api.log"; exit 1; }
"$venv/bin/schemathesis" --config-file tools/schemathesis.toml run "http://$addr/api/v1/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks all --max-examples "${APEXSIM_SCHEMATHESIS_EXAMPLES:-30}" --seed 1 --no-color

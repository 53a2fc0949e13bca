#!/usr/bin/env bash
# Installs what CI needs beyond the Rust toolchain:
#   promtool (Debian's prometheus): the server test lints `/metrics` with it;
#   redis-server (Debian's redis-server): the Redis publisher's tests start one per test;
#   the Windows target (rustup) and MinGW's C compiler (Debian's gcc-mingw-w64-x86-64): CI
#   checks that the binary, `apexsim live` included, builds for Windows;
#   Debian's chromium and Playwright in a venv (tools/browser/run.sh): the web pages' tests;
#   protoc and the well-known types (Debian's protobuf-compiler, libprotobuf-dev): the
#   `agones` feature's SDK compiles its protos;
#   grpcio in a venv (tools/agones/run.sh): the fake Agones SDK server of the Agones test.
# Run by .ci/run; safe to run again (does nothing when everything is there).
set -euo pipefail
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v redis-server >/dev/null || need+=(redis-server)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
rustup target list --installed | grep -qx x86_64-pc-windows-gnu ||
    rustup target add x86_64-pc-windows-gnu
"$(dirname "$0")/browser/run.sh"
"$(dirname "$0")/agones/run.sh"

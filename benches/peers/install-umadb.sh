#!/usr/bin/env bash
# Installs the UmaDB server, the peer of the append benchmark (`--features bench-umadb`).
# Building it needs protoc (Debian protobuf-compiler). Does nothing that is already done.
set -euo pipefail

if ! command -v protoc >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends protobuf-compiler
fi

if ! command -v umadb >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/umadb" ]; then
    cargo install umadb --locked
fi

echo "umadb: $(command -v umadb || echo "${CARGO_HOME:-$HOME/.cargo}/bin/umadb")"

#!/bin/sh
# Prepare a fresh checkout: the Debian packages the project and its tests use (python3-venv,
# redis-server; installed when missing and running as root), then a virtual environment in
# .venv with sel-otel and its test tools. Says what it does, one line per step.
set -eu
cd "$(dirname "$0")/.."
say() { echo "setup: $*"; }
say "checking for the system packages python3-venv and redis-server"
missing=""
python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$missing python3-venv"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing$missing with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "setup: please install:$missing (Redis tests are skipped without redis-server)" >&2
    fi
fi
# A venv left half-made (no pip) by a failed earlier run is made again.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    say "creating the virtual environment .venv"
    python3 -m venv --clear .venv
fi
say "installing sel-otel and its test tools into .venv at the versions in constraints.txt (pip; a minute or so the first time)"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
say "done: .venv/bin/sel-otel console runs the console, .venv/bin/python -m pytest the tests"

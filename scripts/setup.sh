#!/bin/sh
# Prepare a fresh checkout: a virtual environment with sel-otel and its test tools, and the
# Debian packages the tests use (redis-server) when running as root on Debian/Ubuntu.
set -eu
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "setup: redis-server not found; Redis tests will be skipped (install redis-server)" >&2
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

#!/bin/sh
# A Docker engine and the project's images, for the tests that run containers (testcontainers).
#
#   sh scripts/docker-setup.sh         install docker.io and mmdebstrap when missing (as root,
#                                      with apt-get), start dockerd when no engine answers, and
#                                      build the images that are missing or out of date
#   sh scripts/docker-setup.sh stop    stop the dockerd that this script started, if any
#
# Best effort: each step prints one line; a step that cannot be done (no root, no apt-get, a
# failed build) says why and is skipped, and the tests that need what is missing skip, saying
# why. It always exits 0, so it never stops the tests, and its downloads and builds stop
# after 9 minutes in all. SEL_TEST_DOCKER=0 skips it all.
#
# dockerd is started with --ip 127.0.0.1: ports that containers publish bind to loopback only.
# No image registry is used: images are built from the host's own apt sources (mmdebstrap
# makes a Debian root filesystem, `docker import` makes it an image) and the host's own pip
# configuration (`pip wheel`), and a build gets no network (--network none).
#
#   sel-otel/redis:test    Debian's redis-server
#   sel-otel/python:test   Debian's python3 with venv, procps and iproute2
#   sel-otel/app:test      sel-otel/python:test with sel-otel and its dependencies installed
#                          from wheels built here (deploy/app-offline.Dockerfile)
#   sel-otel/collector:test  sel-otel/python:test with rotel, an OTLP collector whose binary
#                          ships in its PyPI wheel (deploy/collector-offline.Dockerfile)
#
# SEL_TEST_<NAME>_IMAGE (SEL_TEST_REDIS_IMAGE...) names an image otherwise; the tests read the
# same variables (tests/docker_engine.py). An image carries a label with the digest of what it
# is made from, and is built again when that changes. The engine's log and the build logs are
# in $TMPDIR/sel-otel-docker (/tmp/sel-otel-docker by default).
#
# To add an image NAME: append NAME to IMAGES, after the images it is built on, and define
# recipe_NAME (prints what the image is made from; its digest decides a rebuild) and
# build_NAME TAG DIGEST (builds it, with the label $LABEL=DIGEST).
cd "$(dirname "$0")/.." || exit 1
STATE=${TMPDIR:-/tmp}/sel-otel-docker
IMAGES="redis python app collector"
LABEL=org.sel-otel.recipe
DEADLINE=$(($(date +%s) + 540))
mkdir -p "$STATE"

say() { echo "docker-setup: $*"; }

# bounded COMMAND...: run the program COMMAND, stopped at the deadline.
bounded() {
    local left=$((DEADLINE - $(date +%s)))
    timeout "$((left > 0 ? left : 1))" "$@"
}

# last_line LOG: the log's last line, without terminal escapes.
last_line() { tail -n 1 "$1" | tr -cd '[:print:]'; }

# step WHAT LOG COMMAND...: run COMMAND with its output in LOG; say how long it took or why
# it failed.
step() {
    local what="$1" log="$2" started
    shift 2
    started=$(date +%s)
    if "$@" >"$log" 2>&1; then
        say "$what: done in $(($(date +%s) - started)) s"
    elif [ "$(date +%s)" -ge "$DEADLINE" ]; then
        say "$what: STOPPED after $(($(date +%s) - started)) s: the set-up's time is up (log: $log)"
        return 1
    else
        say "$what: FAILED after $(($(date +%s) - started)) s: $(last_line "$log") (log: $log)"
        return 1
    fi
}

# require PACKAGE TEST...: install the Debian PACKAGE unless the command TEST succeeds.
require() {
    local package="$1"
    shift
    "$@" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "$package: not installed, and installing it needs root and apt-get"
        return 1
    fi
    step "install $package" "$STATE/apt.log" apt_install "$package"
}

apt_install() {
    bounded apt-get update -qq &&
        bounded env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "$@"
}

start_engine() {
    if docker info >/dev/null 2>&1; then
        say "engine: answers at ${DOCKER_HOST:-the local socket}"
        return 0
    fi
    require docker.io command -v dockerd || return 1
    if [ "$(id -u)" != 0 ]; then
        say "engine: none answers, and only root can start dockerd"
        return 1
    fi
    started=$(date +%s)
    nohup dockerd --ip 127.0.0.1 --pidfile "$STATE/dockerd.pid" \
        </dev/null >"$STATE/dockerd.log" 2>&1 &
    pid=$!
    until docker info >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null || [ $(($(date +%s) - started)) -gt 60 ]; then
            say "engine: dockerd did not start: $(last_line "$STATE/dockerd.log")" \
                "(log: $STATE/dockerd.log)"
            return 1
        fi
        sleep 0.2
    done
    say "engine: dockerd started on 127.0.0.1 in $(($(date +%s) - started)) s" \
        "(pid $pid, log: $STATE/dockerd.log)"
}

stop_engine() {
    pid=$(cat "$STATE/dockerd.pid" 2>/dev/null)
    if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ]; then
        say "engine: no dockerd started by this script is running"
        return 0
    fi
    started=$(date +%s)
    kill -TERM "$pid"
    while [ -e "/proc/$pid" ] && [ $(($(date +%s) - started)) -lt 60 ]; do sleep 0.2; done
    if [ -e "/proc/$pid" ]; then
        say "engine: dockerd (pid $pid) still runs 60 s after SIGTERM (log: $STATE/dockerd.log)"
    else
        say "engine: dockerd stopped in $(($(date +%s) - started)) s"
    fi
}

# image NAME: the tag of the project's image NAME.
image() {
    eval "echo \"\${SEL_TEST_$(echo "$1" | tr '[:lower:]' '[:upper:]')_IMAGE:-sel-otel/$1:test}\""
}

# -- images from Debian packages ---------------------------------------------------------------

SUITE=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")

# The host's apt sources, as files for mmdebstrap.
apt_sources() {
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources; do
        [ -s "$file" ] && echo "$file"
    done
}

# debian_image TAG DIGEST PACKAGES CHANGE...: a root filesystem with the Debian PACKAGES
# (comma-separated) and their dependencies, imported as TAG with the Dockerfile CHANGEs.
debian_image() {
    local tag="$1" digest="$2" packages="$3" rootfs="$STATE/rootfs-$$.tar" status
    shift 3
    # shellcheck disable=SC2046 # one argument per sources file
    bounded mmdebstrap --variant=essential --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$SUITE" "$rootfs" $(apt_sources) || { rm -f "$rootfs"; return 1; }
    set -- "$@" "LABEL $LABEL=$digest"
    for change; do # each CHANGE becomes `--change CHANGE`
        set -- "$@" --change "$change"
        shift
    done
    bounded docker import "$@" "$rootfs" "$tag"
    status=$?
    rm -f "$rootfs"
    return "$status"
}

# debian_recipe PACKAGES CHANGE...: what a debian_image is made from.
debian_recipe() { echo "mmdebstrap essential $SUITE"; printf '%s\n' "$@"; }

# Each image from Debian packages: `NAME_debian COMMAND ARG...` runs COMMAND ARG... PACKAGES
# CHANGE..., with debian_recipe or debian_image as COMMAND.
# Redis listens on every interface of its container, where only published ports reach it,
# without persistence; a command given to the container (say with --requirepass) keeps the
# defaults, which snapshot to the writable /var/lib/redis.
redis_debian() {
    "$@" redis-server 'USER redis' 'WORKDIR /var/lib/redis' 'EXPOSE 6379' \
        'CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]'
}
recipe_redis() { redis_debian debian_recipe; }
build_redis() { redis_debian debian_image "$1" "$2"; }

python_debian() { "$@" python3,python3-venv,procps,iproute2 'CMD ["python3"]'; }
recipe_python() { python_debian debian_recipe; }
build_python() { python_debian debian_image "$1" "$2"; }

# -- images built on those -------------------------------------------------------------------

# image_pip ARG...: pip, with the host's pip configuration, run by the Python of the python
# image. Only that Python resolves the requirements that fit the image: environment markers tell
# even patch releases apart (redis wants async-timeout below Python 3.11.3). The image's Python
# is the host's Debian python3, from the same suite; a virtual environment of it, kept in
# $STATE, runs pip.
image_pip() {
    local here there
    here=$(/usr/bin/python3 -c 'import platform; print(platform.python_version())')
    there=$(docker run --rm "$(image python)" \
        python3 -c 'import platform; print(platform.python_version())')
    if [ "$here" != "$there" ]; then
        echo "$(image python) has Python $there, the host's /usr/bin/python3 is $here" >&2
        return 1
    fi
    [ -x "$STATE/pip/bin/pip" ] || /usr/bin/python3 -m venv --clear "$STATE/pip" || return 1
    bounded "$STATE/pip/bin/pip" --disable-pip-version-check "$@"
}

# What the project's wheel is built from (README.md too, but only as its description).
APP_SOURCES="pyproject.toml constraints.txt sel_otel agents"
recipe_app() {
    docker image inspect -f '{{.Id}}' "$(image python)"
    # shellcheck disable=SC2086 # one argument per path
    find $APP_SOURCES deploy/app-offline.Dockerfile -type f ! -name '*.pyc' |
        LC_ALL=C sort | xargs sha256sum
}
build_app() {
    local context="$STATE/app-context" status
    rm -rf "$context" && mkdir -p "$context/source" || return 1
    # The wheel is built from a copy: pip writes build/ into the tree it builds.
    # shellcheck disable=SC2086 # one argument per path
    cp -R $APP_SOURCES README.md "$context/source/" &&
        image_pip wheel -q -c constraints.txt -w "$context/wheels" "$context/source" &&
        bounded docker build --network none --force-rm --build-arg BASE="$(image python)" \
            --label "$LABEL=$2" -f deploy/app-offline.Dockerfile -t "$1" "$context"
    status=$?
    rm -rf "$context"
    return "$status"
}

# The collector: rotel, pinned, from a wheel downloaded with the host's pip configuration; its
# binary links libpython, whose Debian package is downloaded with the host's apt sources.
ROTEL_VERSION=0.0.1a15
recipe_collector() {
    docker image inspect -f '{{.Id}}' "$(image python)"
    echo "rotel==$ROTEL_VERSION libpython"
    sha256sum deploy/collector-offline.Dockerfile
}
build_collector() {
    local context="$STATE/collector-context" status version
    rm -rf "$context" && mkdir -p "$context/debs" || return 1
    version=$(docker run --rm "$(image python)" \
        python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') &&
        (cd "$context/debs" && bounded apt-get download -q "libpython$version") &&
        image_pip download -q --no-deps --only-binary :all: -d "$context/wheels" \
            "rotel==$ROTEL_VERSION" &&
        bounded docker build --network none --force-rm --build-arg BASE="$(image python)" \
            --label "$LABEL=$2" -f deploy/collector-offline.Dockerfile -t "$1" "$context"
    status=$?
    rm -rf "$context"
    return "$status"
}

build_images() {
    require mmdebstrap command -v mmdebstrap
    require python3-venv /usr/bin/python3 -c 'import ensurepip, venv'
    for name in $IMAGES; do
        tag=$(image "$name")
        digest=$(recipe_"$name" 2>/dev/null | sha256sum | cut -c1-16)
        built=$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$tag" 2>/dev/null)
        if [ "$built" = "$digest" ]; then
            say "image $tag: up to date"
        else
            step "image $tag: build" "$STATE/build-$name.log" build_"$name" "$tag" "$digest"
        fi
    done
    # The versions these builds replaced, which no tag names any more.
    docker image prune -f --filter "label=$LABEL" >/dev/null 2>&1
}

case "${1:-start}" in
start)
    if [ "${SEL_TEST_DOCKER:-1}" = 0 ]; then
        say "skipped (SEL_TEST_DOCKER=0): the tests that run containers will skip"
    elif start_engine; then
        build_images
    else
        say "no engine: the tests that run containers will skip"
    fi
    ;;
stop) stop_engine ;;
*)
    echo "usage: sh scripts/docker-setup.sh [start|stop]" >&2
    exit 2
    ;;
esac
exit 0

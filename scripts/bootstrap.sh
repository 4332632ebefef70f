# Sourced by scripts/demo and scripts/test: make sure this machine has what they need.
#  - PostgreSQL server and client binaries (Debian's postgresql package; installed when root and apt exist)
#  - a virtualenv in .venv (the distribution's Python) with pgsluice and its test dependencies (re-installed when pyproject.toml changes)
# shellcheck shell=bash

_have_pg_server() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}

if ! _have_pg_server || ! command -v pg_dump >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing PostgreSQL from Debian's packages" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-client >/dev/null
        # Debian starts a cluster on 5432; ours are throwaway clusters on free ports.
        command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
            pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
        done
    else
        echo "bootstrap: PostgreSQL server binaries are missing: install Debian's 'postgresql' package" >&2
        exit 1
    fi
fi

# The distribution's interpreter when there is one (>= 3.11): the image and CI run Debian's
# build. A default pyenv build (no profile-guided optimisation) ran Python code ~25% slower
# here (timeit) and started pgsluice ~20 ms later, which every benchmark would count.
# PGSLUICE_PYTHON chooses another.
PYTHON="${PGSLUICE_PYTHON:-}"
if [ -z "$PYTHON" ]; then
    PYTHON=python3
    if /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PYTHON=/usr/bin/python3
    fi
fi
if ! "$PYTHON" -c "import venv, ensurepip" 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
    fi
fi

VENV="${PGSLUICE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
_stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$_stamp" ]; then
    echo "bootstrap: installing pgsluice and its test dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade "pip>=25.1"
    "$VENV/bin/python" -m pip install -q -e . --group dev
    rm -f "$VENV"/.installed-*
    touch "$_stamp"
fi

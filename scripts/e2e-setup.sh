# Sourced by .ci/run: make the e2e tests' tools present and running on this machine.
#  - a Docker engine: dockerd --storage-driver vfs, started here when none answers (stopped by cleanup)
#  - the local base image (scripts/build-base-image.sh; the rootfs is cached in /var/cache/pgsluice)
#  - helm, built from source with the Go module proxy (cached in /var/cache/pgsluice/bin), first and
#    whether or not a Docker engine starts
#  - docker-compose, from Debian's packages
# shellcheck shell=bash
PGSLUICE_CACHE="${PGSLUICE_CACHE:-/var/cache/pgsluice}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
_started_dockerd=""

cleanup() {
    if [ -n "$_started_dockerd" ]; then
        log "stopping the dockerd this run started"
        kill "$_started_dockerd" 2>/dev/null || true
        wait "$_started_dockerd" 2>/dev/null || true
    fi
}

_helm_setup() {
    # First, and without Docker: scripts/check lints the chart with it.
    mkdir -p "$PGSLUICE_CACHE/bin"
    if [ ! -x "$PGSLUICE_CACHE/bin/helm" ] || ! "$PGSLUICE_CACHE/bin/helm" version 2>/dev/null | grep -q "${HELM_VERSION%.*}"; then
        log "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
        GOBIN="$PGSLUICE_CACHE/bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    fi
    export PATH="$PGSLUICE_CACHE/bin:$PATH"
}

_e2e_setup() {
    if ! command -v docker-compose >/dev/null; then
        log "apt-get install docker-compose"
        apt-get install -y -q docker-compose >/dev/null
    fi
    if ! docker info >/dev/null 2>&1; then
        log "starting dockerd (storage driver vfs)"
        dockerd --storage-driver vfs >/tmp/pgsluice-ci-dockerd.log 2>&1 &
        _started_dockerd=$!
        for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || { log "dockerd did not start: $(tail -3 /tmp/pgsluice-ci-dockerd.log)"; return 1; }
    fi
    log "local base image"
    scripts/build-base-image.sh pgsluice-base:trixie
    export PGSLUICE_BASE_IMAGE=pgsluice-base:trixie
}

_helm_setup || log "helm could not be built: scripts/check fails in CI, the chart tests skip"
_e2e_setup

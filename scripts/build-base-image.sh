#!/usr/bin/env bash
# Build a local stand-in for python:3.13-slim-trixie when no image registry is reachable:
# debootstrap Debian trixie (Python 3.13) into a cached folder, prune it, `docker import` it.
#   scripts/build-base-image.sh [TAG]     (default pgsluice-base:trixie)
# The rootfs is cached in ${PGSLUICE_CACHE:-/var/cache/pgsluice}; a second run only imports.
set -euo pipefail
tag="${1:-pgsluice-base:trixie}"
cache="${PGSLUICE_CACHE:-/var/cache/pgsluice}"
rootfs="$cache/trixie-rootfs"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag exists" >&2
    exit 0
fi
if [ ! -f "$rootfs/.complete" ]; then
    rm -rf "$rootfs"
    mkdir -p "$cache"
    echo "debootstrap trixie into $rootfs" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates trixie "$rootfs" "$mirror" >/dev/null
    # What python:slim does not carry either: caches, package lists, docs, translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
    touch "$rootfs/.complete"
fi
echo "docker import $tag" >&2
tar -C "$rootfs" --exclude=./.complete -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$tag" >/dev/null

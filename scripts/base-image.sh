#!/usr/bin/env bash
# Build a local Python 3.11 base image from Debian's packages, for machines
# that cannot pull the default base image (no container registry reachable).
#
# Usage: scripts/base-image.sh [IMAGE_TAG]     (default stageflow-base:bookworm-py311)
#
# The image is a debootstrap'ed Debian bookworm (python3 is 3.11 there, so the
# host's cp311 manylinux wheels install in it) with python3, python3-venv and
# ca-certificates. No pip is installed system-wide: Debian marks its python3
# "externally managed" (PEP 668), so Dockerfiles should do
#     RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-index --find-links ...
# (ensurepip brings pip into the venv offline). The same lines work on the
# official python:3.11-slim image, so one Dockerfile serves both bases.
#
# Environment:
#   DEBIAN_MIRROR   Debian mirror URL for debootstrap (default: the one this
#                   machine's apt uses, read from /etc/apt/sources.list{,.d})
#   DEBIAN_SUITE    default bookworm
#   BASE_INCLUDE    packages to add (default python3,python3-venv,ca-certificates)
set -euo pipefail

TAG="${1:-stageflow-base:bookworm-py311}"
SUITE="${DEBIAN_SUITE:-bookworm}"
INCLUDE="${BASE_INCLUDE:-python3,python3-venv,ca-certificates}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf 'base-image: %s\n' "$*" >&2; }

if ! docker info >/dev/null 2>&1; then
    "$HERE/docker-up.sh"
fi

if docker image inspect "$TAG" >/dev/null 2>&1; then
    log "image $TAG already exists locally ($(docker image inspect -f '{{.Id}}' "$TAG")); nothing to do"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap from Debian's packages (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# The mirror this machine's apt already uses (first non-security "deb" source
# with component main), so debootstrap reaches it wherever apt does.
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: stanzas separated by blank lines; comments start with '#'.
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && comps ~ /(^| )main( |$)/ && uris != "" && suites !~ /-security/ && enabled !~ /^[Nn]o/) {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = comps = uris = suites = enabled = ""
            }
            /^#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            tolower($1) == "types:"      { $1 = ""; types = $0 }
            tolower($1) == "uris:"       { $1 = ""; sub(/^ +/, ""); uris = $0 }
            tolower($1) == "suites:"     { $1 = ""; suites = $0 }
            tolower($1) == "components:" { $1 = ""; comps = $0 }
            tolower($1) == "enabled:"    { enabled = $2 }
            END { if (!found) flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # one-line format: deb [options] URI suite components...
        awk '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                uri = $i; suite = $(i+1)
                if (suite !~ /-security/ && suite !~ /-updates/) {
                    for (j = i + 2; j <= NF; j++) if ($j == "main") { print uri; exit }
                }
            }' "$f"
    done
}
MIRROR="${DEBIAN_MIRROR:-$(find_mirror | head -n1)}"
if [ -z "$MIRROR" ]; then
    log "could not find a Debian mirror in /etc/apt; set DEBIAN_MIRROR"
    exit 1
fi

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/stageflow-base.XXXXXX")"
ROOTFS="$WORK/rootfs"
cleanup() {
    # debootstrap mounts proc/sys (and may bind /dev) inside the target; a
    # failed run can leave them mounted. Unmount everything under ROOTFS,
    # deepest first, before deleting, and never cross into another filesystem.
    local m
    if [ -d "$ROOTFS" ]; then
        awk -v r="$ROOTFS" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
    fi
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

start=$(date +%s)
log "debootstrap $SUITE from $MIRROR (include: $INCLUDE) into $ROOTFS (a few minutes)"
if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1; then
    log "debootstrap failed; last lines of its log:"
    tail -n 30 "$WORK/debootstrap.log" >&2 || true
    [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
    exit 1
fi
t_boot=$(date +%s)

# Keep the image small: apt caches and lists, docs, man pages, logs.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* "$ROOTFS"/debootstrap \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true

log "importing as $TAG"
tar --numeric-owner -C "$ROOTFS" -c . |
    docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        --message "debootstrap $SUITE minbase + $INCLUDE" \
        - "$TAG" >/dev/null
end=$(date +%s)

size=$(docker image inspect -f '{{.Size}}' "$TAG")
log "built $TAG: $(( size / 1000000 )) MB; debootstrap $(( t_boot - start )) s, total $(( end - start )) s"
docker run --rm "$TAG" python3 -c 'import sys, ssl, venv; print("python", sys.version.split()[0])' >&2

#!/usr/bin/env bash
# Make a Docker daemon available on this machine (developer machines and CI).
#
# Idempotent. Installs Debian's docker.io (dockerd), docker-compose (v1),
# docker-registry and debootstrap if any is missing (as root), then, unless
# `docker info` already reaches a daemon, starts dockerd in the background and
# waits (bounded) until it answers.
#
# Environment:
#   DOCKERD_LOG          where dockerd logs (default /var/log/dockerd.log)
#   DOCKER_UP_TIMEOUT    seconds to wait for the daemon (default 60)
#   DOCKERD_EXTRA_ARGS   extra flags for dockerd (word-split)
set -euo pipefail

log() { printf 'docker-up: %s\n' "$*" >&2; }

# The tools the images and tests need besides the daemon: installed even when a daemon already answers (a
# machine that came with Docker running may still lack the registry the push tests start).
missing=()
for bin in docker-compose docker-registry debootstrap; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
daemon_up=0
docker info >/dev/null 2>&1 && daemon_up=1
# /usr/local/bin/docker (the client) may already be on the machine; the daemon comes from Debian's docker.io.
[ "$daemon_up" -eq 1 ] || command -v dockerd >/dev/null 2>&1 || missing+=(dockerd)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        log "missing: ${missing[*]}; installing docker.io docker-compose docker-registry debootstrap (apt-get; a minute or two)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            docker.io docker-compose docker-registry debootstrap >/dev/null
    elif [ "$daemon_up" -eq 1 ]; then
        log "warning: missing ${missing[*]} (the push tests and the Debian base image need them); install as root"
    fi
fi

if [ "$daemon_up" -eq 1 ]; then
    log "docker daemon already running"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "not root and no daemon reachable; run as root (installs packages, starts dockerd)"
    exit 1
fi

# Another dockerd may still be starting (e.g. two callers at once): don't start
# a second one on the same data root, just wait for it below.
if pidof dockerd >/dev/null 2>&1; then
    log "dockerd process exists; waiting for it"
else
    DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
    if ! touch "$DOCKERD_LOG" 2>/dev/null; then
        DOCKERD_LOG="$(mktemp /tmp/dockerd.XXXXXX.log)"
    fi
    # A stale pid file from a dockerd that died (machine handed back as it was,
    # processes gone) makes dockerd refuse to start.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    # No flags needed here (measured): dockerd picks overlay2 by itself on this
    # ext4 root (the kernel has overlayfs; cgroup v1 with the cgroupfs driver),
    # and Debian's iptables (nf_tables backend, pulled in by docker.io) lets it
    # set up the default bridge, so containers and RUN steps get a network.
    # setsid + nohup: the daemon keeps running after this script (and the
    # shell or CI step that called it) ends.
    log "starting dockerd (log: $DOCKERD_LOG)"
    # shellcheck disable=SC2086
    setsid nohup dockerd ${DOCKERD_EXTRA_ARGS:-} >>"$DOCKERD_LOG" 2>&1 </dev/null &
    started=$!
fi

timeout="${DOCKER_UP_TIMEOUT:-60}"
deadline=$(( $(date +%s) + timeout ))
until docker info >/dev/null 2>&1; do
    # $! is dockerd itself (setsid and nohup exec into it); pidof covers a
    # setsid that forked instead.
    if [ -n "${started:-}" ] && ! kill -0 "$started" 2>/dev/null && ! pidof dockerd >/dev/null 2>&1; then
        log "dockerd exited before it answered; last lines of ${DOCKERD_LOG}:"
        tail -n 30 "$DOCKERD_LOG" >&2 || true
        exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "dockerd did not answer within ${timeout}s; last lines of ${DOCKERD_LOG:-/var/log/dockerd.log}:"
        tail -n 30 "${DOCKERD_LOG:-/var/log/dockerd.log}" >&2 || true
        exit 1
    fi
    sleep 0.5
done
log "docker daemon up: $(docker info --format '{{.ServerVersion}} storage={{.Driver}} cgroup={{.CgroupVersion}}/{{.CgroupDriver}}')"

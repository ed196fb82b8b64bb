#!/usr/bin/env bash
# Shared by scripts/test and scripts/example: makes sure the Docker engine
# runs and the Debian packages genesis and its tests use are installed.
# Safe to run again; it only installs what is missing.

say() { echo "==> $*" >&2; }

ensure_packages() {
  local missing=()
  command -v nats-server >/dev/null || missing+=(nats-server)
  # The server the metrics test scrapes genesis with (tests/service/operations.rs).
  command -v prometheus >/dev/null || missing+=(prometheus)
  # systemd-analyze verifies the packaged unit (tests/store/packaging.rs).
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v git >/dev/null || missing+=(git)
  command -v chromium >/dev/null || missing+=(chromium)
  # gVisor, for the runsc tests (under a dockerd the tests start themselves);
  # mkfs.ext4 and mount for the disk cap.
  command -v runsc >/dev/null || missing+=(runsc)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  if ! command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; then
    missing+=(docker.io)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then
    return
  fi
  say "starting the Docker engine (dockerd, log in /tmp/genesis-dockerd.log)"
  nohup dockerd >/tmp/genesis-dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && return
    sleep 0.5
  done
  echo "dockerd did not come up; see /tmp/genesis-dockerd.log" >&2
  exit 1
}

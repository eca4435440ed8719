#!/bin/sh
# Install what `make bench` needs beyond scripts/deps.sh, only what is
# missing: sshd and ssh for the ControlMaster row, bubblewrap for the bwrap
# row, libcurl headers and gcc for bench/httpbench.c, websocketd for the
# streaming row's peer, libwebsockets headers for bench/wsbench.c.
# Idempotent and quiet when everything is there.  hyperfine is not needed (bench/spawnbench.c
# does that job) and is not installed.
set -e
need="openssh-server openssh-client bubblewrap gcc pkg-config libcurl4-openssl-dev curl websocketd libwebsockets-dev"
missing=""
for p in $need; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "bench-deps: installing:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
# shellcheck disable=SC2086  # $missing is a list of names
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >&2

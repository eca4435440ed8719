#!/bin/sh
# Install the Debian packages sbx needs, only those missing.  Idempotent and
# quiet when everything is there.
set -e
need="gcc make pkg-config libmicrohttpd-dev libwebsockets-dev libjansson-dev libsqlite3-dev
check libsubunit-dev libseccomp-dev libcurl4-openssl-dev bubblewrap curl python3 python3-websockets
python3-yaml jq tmux qemu-system-x86 busybox-static e2fsprogs lz4"
missing=""
for p in $need; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# node + npm build the browser console (npm ci in web/).  Checked by command,
# not by package: a NodeSource nodejs ships its own npm, and Debian's npm
# package would conflict with it.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >&2

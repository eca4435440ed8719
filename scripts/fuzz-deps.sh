#!/bin/sh
# Install what `make fuzz` needs (clang with libFuzzer and the sanitizer
# runtimes), only what is missing.  Separate from deps.sh: building and
# testing sbx does not need clang.
set -e
need="clang libclang-rt-14-dev libjansson-dev pkg-config"
missing=""
for p in $need; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "fuzz-deps: installing:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >&2

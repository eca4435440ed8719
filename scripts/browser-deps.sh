#!/bin/sh
# Install what the browser test (tests/integration/test_web.py) needs beyond
# scripts/deps.sh: Debian's chromium, driven headless by playwright-core (an
# npm devDependency of web/, installed by `npm ci` there).  Separate from
# deps.sh because it is large and only that test uses it.  Idempotent.
set -e
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
  echo "browser-deps: installing chromium" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
fi
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$here/web/node_modules/playwright-core" ]; then
  (cd "$here/web" && npm ci --no-audit --no-fund)
fi

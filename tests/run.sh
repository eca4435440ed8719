#!/usr/bin/env bash
# Runs every unit test binary ($BUILD/tests/test_*, Check) and then the
# integration suite (tests/integration, Debian's /usr/bin/python3 + unittest)
# against a real sbxd.  Prints per-suite results and, last, "N passed, M failed".
# Exits non-zero if anything failed or a suite crashed.
#
#   BUILD=build-asan tests/run.sh          the same against the ASan build
#   tests/run.sh -k TestExec               only integration tests matching
set -u
cd "$(dirname "$0")/.."
export BUILD="${BUILD:-build}"
PY=/usr/bin/python3
UNIT_TIMEOUT="${UNIT_TIMEOUT:-300}"
INTEG_TIMEOUT="${INTEG_TIMEOUT:-1200}"

passed=0
failed=0
crashed=0
filter=("$@")

summary=()
note() { summary+=("$1"); }

if [ ${#filter[@]} -eq 0 ]; then
  echo "== unit tests ($BUILD/tests)"
  shopt -s nullglob
  bins=("$BUILD"/tests/test_*)
  if [ ${#bins[@]} -eq 0 ]; then
    echo "  no unit test binaries in $BUILD/tests (make unit)"
    note "unit: none found"
    crashed=1
  fi
  for t in "${bins[@]}"; do
    [ -x "$t" ] && [ -f "$t" ] || continue
    case "$t" in *.d|*.o) continue ;; esac
    name=$(basename "$t")
    out=$(timeout "$UNIT_TIMEOUT" "$t" 2>&1)
    rc=$?
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+%: Checks: [0-9]+, Failures: [0-9]+, Errors: [0-9]+' | tail -n1)
    if [ -z "$line" ]; then
      printf '%s\n' "$out" | tail -n 30 | sed 's/^/  | /'
      echo "  $name: CRASHED (exit $rc, no Check summary)"
      note "$name: crashed (exit $rc)"
      failed=$((failed + 1))
      crashed=1
      continue
    fi
    n=$(sed -E 's/.*Checks: ([0-9]+).*/\1/' <<<"$line")
    f=$(sed -E 's/.*Failures: ([0-9]+).*/\1/' <<<"$line")
    e=$(sed -E 's/.*Errors: ([0-9]+).*/\1/' <<<"$line")
    ok=$((n - f - e))
    passed=$((passed + ok))
    failed=$((failed + f + e))
    if [ $((f + e)) -ne 0 ]; then
      printf '%s\n' "$out" | grep -vE '^[0-9]+%: Checks' | grep -E ':[EF]:' | sed 's/^/  | /'
    fi
    if [ "$rc" -ne 0 ] && [ $((f + e)) -eq 0 ]; then
      # e.g. a sanitizer report at exit after every check passed
      printf '%s\n' "$out" | tail -n 30 | sed 's/^/  | /'
      echo "  $name: $ok/$n passed but exit $rc: CRASHED"
      note "$name: exit $rc after checks"
      failed=$((failed + 1))
      crashed=1
      continue
    fi
    echo "  $name: $ok passed, $((f + e)) failed"
    note "$name: $ok passed, $((f + e)) failed"
  done
fi

echo "== integration tests (sbxd: $BUILD/sbxd)"
if [ ! -x "$BUILD/sbxd" ]; then
  echo "  no $BUILD/sbxd (make all)"
  note "integration: no sbxd"
  crashed=1
else
  log=$(mktemp)
  timeout "$INTEG_TIMEOUT" "$PY" tests/integration/runner.py "${filter[@]}" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  line=$(grep -E '^INTEGRATION: passed=[0-9]+ failed=[0-9]+' "$log" | tail -n1)
  rm -f "$log"
  if [ -z "$line" ]; then
    echo "  integration suite CRASHED (exit $rc, no summary)"
    note "integration: crashed (exit $rc)"
    failed=$((failed + 1))
    crashed=1
  else
    ip=$(sed -E 's/.*passed=([0-9]+).*/\1/' <<<"$line")
    if_=$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$line")
    passed=$((passed + ip))
    failed=$((failed + if_))
    note "integration: $ip passed, $if_ failed"
    if [ "$rc" -ne 0 ] && [ "$if_" -eq 0 ]; then
      note "integration: exit $rc"
      crashed=1
    fi
  fi
fi

echo "== summary"
for s in "${summary[@]}"; do echo "  $s"; done
echo "$passed passed, $failed failed"
if [ "$failed" -ne 0 ] || [ "$crashed" -ne 0 ]; then exit 1; fi
exit 0

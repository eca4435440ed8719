#!/bin/bash
# The benchmark table (`make bench`): sbxd's one-shot exec and sandbox create
# beside the peers that bound them, all measured in this one run:
#
#   - a bare posix_spawn + waitpid of /bin/true (the physical limit)
#   - a fresh `bwrap --unshare-all ... true` per command
#   - `ssh localhost true` over an OpenSSH ControlMaster connection (a private
#     sshd on a free loopback port, temp host and client keys)
#   - POST /v1/sandboxes/{ref}/exec {"cmd":"/bin/true"} on keep-alive
#     connections: sequential, and 8 concurrent clients
#   - POST /v1/sandboxes (then DELETE)
#   - the vm driver: POST /v1/sandboxes {"driver":"vm"} (create to ready: the
#     guest booted and its agent answering; then DELETE) and one-shot exec
#     of /bin/true in a VM, with the accelerator named (KVM or TCG)
#   - streaming: `head -c 2G /dev/zero` through sbxd's WebSocket exec in the
#     sbx.v1.binary subprotocol to a client that discards it (bench/wsbench.c,
#     a plain-socket RFC 6455 client), beside a bare pipe
#     (`head -c 2G /dev/zero | cat >/dev/null`, the limit) and websocketd
#     (`websocketd --binary sh -c 'head -c 2G /dev/zero'`, the same client);
#     and the time to first byte (start message written to the first stdout
#     frame) of `echo x`
#
# Prints one markdown table on stdout (progress goes to stderr), then the
# targets computed from it.  It reports timings only: no threshold makes it
# fail.  It exits non-zero only when a measurement could not be taken at all
# (the table then says which).  Everything it starts (sbxd, its sandboxes,
# sshd, the ssh master) and every temp file is removed on exit.
#
# Env: BUILD (default build), CC (default gcc), and the counts below.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
CC=${CC:-gcc}
SPAWN_RUNS=${SPAWN_RUNS:-1000}
BWRAP_RUNS=${BWRAP_RUNS:-100}
SSH_RUNS=${SSH_RUNS:-100}
EXEC_RUNS=${EXEC_RUNS:-300}
EXEC_WARMUP=${EXEC_WARMUP:-20}
CONC_CLIENTS=${CONC_CLIENTS:-8}
CONC_RUNS=${CONC_RUNS:-100}     # per client
CREATE_RUNS=${CREATE_RUNS:-30}
STREAM_SIZE=${STREAM_SIZE:-2G}  # head -c syntax; 2G = 2 GiB
STREAM_RUNS=${STREAM_RUNS:-3}   # each peer; the median is the row
TTFB_RUNS=${TTFB_RUNS:-50}
VM_CREATE_RUNS=${VM_CREATE_RUNS:-5}
VM_EXEC_RUNS=${VM_EXEC_RUNS:-100}
STEP_TIMEOUT=${STEP_TIMEOUT:-100} # seconds, per measurement

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)

# ---- build the tools --------------------------------------------------------
OUT=$BUILD/bench
mkdir -p "$OUT"
BFLAGS="-std=gnu11 -O2 -g -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -D_GNU_SOURCE"
# shellcheck disable=SC2086
$CC $BFLAGS -o "$OUT/spawnbench" bench/spawnbench.c
# shellcheck disable=SC2086,SC2046  # flag lists are meant to split
$CC $BFLAGS $(pkg-config --cflags libcurl) -o "$OUT/httpbench" bench/httpbench.c \
    $(pkg-config --libs libcurl) -lpthread
# shellcheck disable=SC2086,SC2046
$CC $BFLAGS $(pkg-config --cflags libwebsockets) -o "$OUT/wsbench" bench/wsbench.c \
    $(pkg-config --libs libwebsockets)
[ -x "$BUILD/sbxd" ] || die "$BUILD/sbxd is missing: run 'make all' first"

# ---- scratch space and cleanup ----------------------------------------------
WORK=$(mktemp -d /tmp/sbx-bench.XXXXXX)
SBXD_PID="" SSHD_PID="" SBXD_URL="" SSH_CTL="" SSH_MASTER_PID="" WSD_PID=""

# shellcheck disable=SC2317  # reached through the trap
cleanup() {
    set +e
    if [ -n "$WSD_PID" ]; then
        kill "$WSD_PID" 2>/dev/null
        wait "$WSD_PID" 2>/dev/null
    fi
    if [ -n "$SSH_MASTER_PID" ]; then
        [ -S "$SSH_CTL" ] && ssh -F /dev/null -S "$SSH_CTL" -O exit x >/dev/null 2>&1
        kill "$SSH_MASTER_PID" 2>/dev/null
        wait "$SSH_MASTER_PID" 2>/dev/null
    fi
    if [ -n "$SSHD_PID" ]; then
        # let the listener reap the master's session process first: an
        # orphan would be left to PID 1, which may not reap (containers)
        for _ in $(seq 30); do pgrep -P "$SSHD_PID" >/dev/null || break; sleep 0.1; done
        kill "$SSHD_PID" 2>/dev/null
        wait "$SSHD_PID" 2>/dev/null
    fi
    if [ -n "$SBXD_PID" ]; then
        # sandboxes outlive sbxd by design, so remove ours before stopping it;
        # the data dir is private, so every sandbox in it is ours
        if kill -0 "$SBXD_PID" 2>/dev/null; then
            for id in $(curl -s --max-time 5 "$SBXD_URL/v1/sandboxes?limit=500" |
                        grep -o 'sbx_[0-9a-f]\{16\}' | sort -u); do
                curl -s --max-time 10 -X DELETE "$SBXD_URL/v1/sandboxes/$id" >/dev/null
            done
        fi
        kill -TERM "$SBXD_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$SBXD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SBXD_PID" 2>/dev/null
        wait "$SBXD_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# field LINE KEY: the value of KEY=value in a tool's output line
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# Table rows are collected as what, p50, p99, notes joined by US (\x1f), so
# that a '|' in a log line cannot break the table; a failed measurement is a
# row that says so, and makes the script's exit status 1 at the end.
US=$'\x1f'
ROWS=()
FAILED=0
row_from() { # what line notes
    ROWS+=("$1$US$(field "$2" p50_ms) ms$US$(field "$2" p99_ms) ms$US$3")
}
row_failed() { # what why
    ROWS+=("$1$US-$US-$US**not measured**: $2")
    FAILED=1
}
cell() { local c=${1//|/\\|}; printf '%s' "${c//$'\n'/ }"; }
row_raw() { # what p50 p99 notes (cells already formatted)
    ROWS+=("$1$US$2$US$3$US$4")
}
# median LIST...: the middle value of numbers (the lower middle for an even count)
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# ---- sbxd ---------------------------------------------------------------------
SBXD_PORT=$(free_port)
SBXD_URL="http://127.0.0.1:$SBXD_PORT"
mkdir -p "$WORK/data"
# the vm driver's image: static busybox and its applets
mkdir -p "$WORK/images/busy/bin" "$WORK/images/busy/etc" "$WORK/images/busy/tmp"
if [ -x /bin/busybox ]; then
    cp /bin/busybox "$WORK/images/busy/bin/"
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$WORK/images/busy/bin/$a"; done
fi
echo 'root:x:0:0:root:/root:/bin/sh' >"$WORK/images/busy/etc/passwd"
echo 'root:x:0:' >"$WORK/images/busy/etc/group"
log "starting sbxd on $SBXD_URL"
"$BUILD/sbxd" --listen "127.0.0.1:$SBXD_PORT" --data-dir "$WORK/data" --log-level warn \
    --images-dir "$WORK/images" >"$WORK/sbxd.log" 2>&1 &
SBXD_PID=$!
SBXD_OK=0
for _ in $(seq 100); do
    if curl -s --max-time 1 "$SBXD_URL/v1/health" 2>/dev/null | grep -q '"ok"'; then
        SBXD_OK=1
        break
    fi
    kill -0 "$SBXD_PID" 2>/dev/null || break
    sleep 0.1
done
SBXD_WHY=""
if [ "$SBXD_OK" = 1 ]; then
    code=$(curl -s -o "$WORK/create.json" -w '%{http_code}' --max-time 30 \
        -XPOST "$SBXD_URL/v1/sandboxes" -d '{"name":"bench"}') || code=000
    if [ "$code" != 201 ]; then
        SBXD_OK=0
        SBXD_WHY="creating the bench sandbox gave HTTP $code: $(head -c 300 "$WORK/create.json" 2>/dev/null)"
    fi
else
    SBXD_WHY="sbxd did not become healthy: $(tail -n 3 "$WORK/sbxd.log" | tr '\n' ' ')"
fi
[ -z "$SBXD_WHY" ] || log "$SBXD_WHY"

# ---- the limit: bare posix_spawn ------------------------------------------------
log "bare posix_spawn of /bin/true x$SPAWN_RUNS"
if out=$(timeout "$STEP_TIMEOUT" "$OUT/spawnbench" -n "$SPAWN_RUNS" -w 50 -- /bin/true); then
    SPAWN_LINE=$out
    row_from "bare \`posix_spawn\` + \`waitpid\` of /bin/true (the limit)" "$out" \
        "$SPAWN_RUNS runs after 50 warm-up, from C"
else
    SPAWN_LINE=""
    row_failed "bare posix_spawn of /bin/true (the limit)" "spawnbench failed"
fi

# ---- a fresh bwrap per command -----------------------------------------------------
BWRAP_WHAT="fresh \`bwrap --unshare-all --ro-bind / / --dev /dev --proc /proc true\`"
log "fresh bwrap per command x$BWRAP_RUNS"
if ! command -v bwrap >/dev/null; then
    row_failed "$BWRAP_WHAT" "bwrap not installed (scripts/bench-deps.sh)"
elif out=$(timeout "$STEP_TIMEOUT" "$OUT/spawnbench" -q -n "$BWRAP_RUNS" -w 5 -- \
        bwrap --unshare-all --ro-bind / / --dev /dev --proc /proc true); then
    row_from "$BWRAP_WHAT" "$out" "$BWRAP_RUNS runs after 5 warm-up, posix_spawn'd from C; $(bwrap --version)"
else
    row_failed "$BWRAP_WHAT" "bwrap failed: $(bwrap --unshare-all --ro-bind / / --dev /dev --proc /proc true 2>&1 | head -c 200)"
fi

# ---- ssh over a ControlMaster -------------------------------------------------------
SSH_WHAT="\`ssh localhost true\` over an OpenSSH ControlMaster connection"
ssh_setup() {
    local d=$WORK/ssh user
    user=$(id -un)
    mkdir -p "$d"
    chmod 700 "$d"
    ssh-keygen -q -t ed25519 -N '' -f "$d/host_key" -C bench-host >/dev/null
    ssh-keygen -q -t ed25519 -N '' -f "$d/client_key" -C bench-client >/dev/null
    cp "$d/client_key.pub" "$d/authorized_keys"
    SSH_PORT=$(free_port)
    # SetEnv SHLVL=1: sshd runs the command as `$SHELL -c true`, and Debian's
    # bash sources ~/.bashrc for ssh commands unless SHLVL says it is nested.
    # A developer's dotfiles (pyenv init here: +80 ms) are not ssh's cost.
    cat >"$d/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile $d/sshd.pid
PermitRootLogin prohibit-password
AuthorizedKeysFile $d/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
X11Forwarding no
PrintMotd no
LogLevel ERROR
SetEnv SHLVL=1
EOF
    # sshd wants its privilege-separation directory; a container that never
    # ran the ssh service has none
    [ "$(id -u)" != 0 ] || mkdir -p /run/sshd
    /usr/sbin/sshd -t -f "$d/sshd_config" || return 1
    /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
    SSHD_PID=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null && break
        kill -0 "$SSHD_PID" 2>/dev/null || { cat "$d/sshd.log" >&2; return 1; }
        sleep 0.1
    done
    SSH_CTL=$d/ctl
    SSH_OPTS=(-F /dev/null -p "$SSH_PORT" -o BatchMode=yes -o LogLevel=ERROR
              -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
              -o GlobalKnownHostsFile=/dev/null)
    SSH_DEST=$user@127.0.0.1
    # the master stays our own child (-N &, not -f, which would daemonize
    # it into an orphan nobody may reap) and is ready once -O check answers
    ssh "${SSH_OPTS[@]}" -i "$d/client_key" -o IdentitiesOnly=yes \
        -M -S "$SSH_CTL" -N "$SSH_DEST" </dev/null 2>"$d/master.log" &
    SSH_MASTER_PID=$!
    for _ in $(seq 100); do
        ssh -F /dev/null -S "$SSH_CTL" -O check x 2>/dev/null && return 0
        kill -0 "$SSH_MASTER_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$d/master.log" "$d/sshd.log" >&2
    return 1
}
log "ssh over a ControlMaster x$SSH_RUNS"
if ! command -v ssh >/dev/null || [ ! -x /usr/sbin/sshd ]; then
    row_failed "$SSH_WHAT" "openssh not installed (scripts/bench-deps.sh)"
elif ! ssh_setup; then
    row_failed "$SSH_WHAT" "could not start the private sshd or the master"
elif out=$(timeout "$STEP_TIMEOUT" "$OUT/spawnbench" -q -n "$SSH_RUNS" -w 5 -- \
        ssh "${SSH_OPTS[@]}" -o ControlMaster=no -S "$SSH_CTL" "$SSH_DEST" true); then
    row_from "$SSH_WHAT" "$out" \
        "$SSH_RUNS runs after 5 warm-up; private sshd on 127.0.0.1, user's shell -c true without dotfiles; $(ssh -V 2>&1 | cut -d, -f1)"
else
    row_failed "$SSH_WHAT" "ssh through the master failed"
fi

# ---- sbxd: one-shot exec and create ------------------------------------------------
EXEC_WHAT="sbxd one-shot exec of /bin/true, sequential"
CONC_WHAT="sbxd one-shot exec of /bin/true, $CONC_CLIENTS concurrent clients"
CREATE_WHAT="sbxd sandbox create (\`POST /v1/sandboxes\`)"
EXEC_LINE="" CREATE_LINE=""
if [ "$SBXD_OK" = 1 ]; then
    log "exec /bin/true sequential x$EXEC_RUNS"
    if out=$(timeout "$STEP_TIMEOUT" "$OUT/httpbench" exec -u "$SBXD_URL" -s bench \
            -n "$EXEC_RUNS" -w "$EXEC_WARMUP"); then
        EXEC_LINE=$out
        row_from "$EXEC_WHAT" "$out" "$EXEC_RUNS requests after $EXEC_WARMUP warm-up on one keep-alive connection, errors: $(field "$out" errors); $(field "$out" rps) req/s"
    else
        row_failed "$EXEC_WHAT" "httpbench failed (see stderr)"
    fi

    log "exec /bin/true, $CONC_CLIENTS clients x$CONC_RUNS"
    if out=$(timeout "$STEP_TIMEOUT" "$OUT/httpbench" exec -u "$SBXD_URL" -s bench \
            -c "$CONC_CLIENTS" -n "$CONC_RUNS" -w 5); then
        row_from "$CONC_WHAT" "$out" "**throughput $(field "$out" rps) req/s**; $CONC_CLIENTS threads x $CONC_RUNS requests (after 5 warm-up each), one keep-alive connection each, per-request latency, errors: $(field "$out" errors)"
    else
        row_failed "$CONC_WHAT" "httpbench failed (see stderr)"
    fi

    log "sandbox create + delete x$CREATE_RUNS"
    if out=$(timeout "$STEP_TIMEOUT" "$OUT/httpbench" create -u "$SBXD_URL" \
            -n "$CREATE_RUNS" -w 2 -p bench-create); then
        CREATE_LINE=$out
        row_from "$CREATE_WHAT" "$out" "$CREATE_RUNS runs after 2 warm-up, each followed by DELETE (DELETE p50 $(field "$out" del_p50_ms) ms, p99 $(field "$out" del_p99_ms) ms), errors: $(field "$out" errors)"
    else
        row_failed "$CREATE_WHAT" "httpbench failed (see stderr)"
    fi
else
    row_failed "$EXEC_WHAT" "$SBXD_WHY"
    row_failed "$CONC_WHAT" "$SBXD_WHY"
    row_failed "$CREATE_WHAT" "$SBXD_WHY"
fi

# ---- the vm driver -----------------------------------------------------------------------
VM_ACCEL=$(curl -s --max-time 5 "$SBXD_URL/v1/version" 2>/dev/null |
    sed -n 's/.*"vm_accelerator":"\([a-z]*\)".*/\1/p')
VM_ACCEL=${VM_ACCEL:-unknown}
VMC_WHAT="sbxd VM sandbox create to ready (\`\"driver\":\"vm\"\`, $VM_ACCEL)"
VME_WHAT="sbxd one-shot exec of /bin/true in a VM ($VM_ACCEL)"
VM_FIELDS='"driver":"vm","image":"busy","limits":{"memory_mib":256}'
if [ "$SBXD_OK" = 1 ]; then
    log "VM sandbox create + delete x$VM_CREATE_RUNS ($VM_ACCEL)"
    if out=$(timeout "$STEP_TIMEOUT" "$OUT/httpbench" create -u "$SBXD_URL" \
            -n "$VM_CREATE_RUNS" -w 1 -p bench-vm -f "$VM_FIELDS"); then
        row_from "$VMC_WHAT" "$out" "$VM_CREATE_RUNS runs after 1 warm-up: QEMU start, guest kernel boot, init, agent hello; each followed by DELETE (a clean power-off: p50 $(field "$out" del_p50_ms) ms), errors: $(field "$out" errors); target under KVM: < 300 ms"
    else
        row_failed "$VMC_WHAT" "httpbench failed (see stderr)"
    fi
    code=$(curl -s -o "$WORK/vm.json" -w '%{http_code}' --max-time 120 \
        -XPOST "$SBXD_URL/v1/sandboxes" -d "{\"name\":\"benchvm\",$VM_FIELDS}") || code=000
    if [ "$code" != 201 ]; then
        row_failed "$VME_WHAT" "creating the VM sandbox gave HTTP $code: $(head -c 300 "$WORK/vm.json")"
    elif out=$(timeout "$STEP_TIMEOUT" "$OUT/httpbench" exec -u "$SBXD_URL" -s benchvm \
            -n "$VM_EXEC_RUNS" -w 10); then
        row_from "$VME_WHAT" "$out" "$VM_EXEC_RUNS requests after 10 warm-up; the agent in the guest, reached over virtio-serial; errors: $(field "$out" errors)"
    else
        row_failed "$VME_WHAT" "httpbench failed (see stderr)"
    fi
else
    row_failed "$VMC_WHAT" "$SBXD_WHY"
    row_failed "$VME_WHAT" "$SBXD_WHY"
fi

# ---- streaming ---------------------------------------------------------------------------
STREAM_BYTES=$(numfmt --from=iec "$STREAM_SIZE")
STREAM_CMD="head -c $STREAM_SIZE /dev/zero"
PIPE_WHAT="bare pipe \`$STREAM_CMD | cat >/dev/null\` (the limit)"
WSD_WHAT="websocketd --binary streaming \`$STREAM_CMD\`"
WS_WHAT="sbxd WebSocket exec streaming \`$STREAM_CMD\` (sbx.v1.binary)"
TTFB_WHAT="sbxd WebSocket exec, time to first byte of \`echo x\`"
gbps() { awk -v b="$STREAM_BYTES" -v s="$1" 'BEGIN { printf "%.3f", b / s / 1e9 }'; }
PIPE_GBPS="" WSD_GBPS="" WS_GBPS="" TTFB_LINE=""

log "bare pipe of $STREAM_SIZE x$STREAM_RUNS"
runs=()
for _ in $(seq "$STREAM_RUNS"); do
    t0=$(date +%s.%N)
    head -c "$STREAM_SIZE" /dev/zero | cat >/dev/null
    t1=$(date +%s.%N)
    runs+=("$(gbps "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")")
done
PIPE_GBPS=$(median "${runs[@]}")
row_raw "$PIPE_WHAT" "$PIPE_GBPS GB/s" "-" "median of $STREAM_RUNS runs (GB/s: ${runs[*]}), timed in bash"

# stream_runs KIND URL [wsbench args]: STREAM_RUNS runs of wsbench; sets
# GBPS_RUNS and FIRST_RUNS, returns 1 if one failed
stream_runs() {
    local kind=$1 url=$2 out
    shift 2
    GBPS_RUNS=() FIRST_RUNS=()
    for _ in $(seq "$STREAM_RUNS"); do
        out=$(timeout "$STEP_TIMEOUT" "$OUT/wsbench" "$kind" -u "$url" -e "$STREAM_BYTES" "$@") ||
            return 1
        GBPS_RUNS+=("$(field "$out" gbps)")
        FIRST_RUNS+=("$(field "$out" first_ms)")
    done
}

log "websocketd streaming $STREAM_SIZE x$STREAM_RUNS"
if ! command -v websocketd >/dev/null; then
    row_failed "$WSD_WHAT" "websocketd not installed (scripts/bench-deps.sh)"
else
    WSD_PORT=$(free_port)
    websocketd --port "$WSD_PORT" --address 127.0.0.1 --binary --loglevel error \
        sh -c "$STREAM_CMD" >"$WORK/websocketd.log" 2>&1 &
    WSD_PID=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$WSD_PORT") 2>/dev/null && break
        sleep 0.1
    done
    if stream_runs raw "ws://127.0.0.1:$WSD_PORT/"; then
        WSD_GBPS=$(median "${GBPS_RUNS[@]}")
        row_raw "$WSD_WHAT" "$WSD_GBPS GB/s" "-" "median of $STREAM_RUNS runs (GB/s: ${GBPS_RUNS[*]}); one process per connection, timed from the 101 to the close; $(websocketd --version 2>&1 | head -n1)"
    else
        row_failed "$WSD_WHAT" "wsbench raw failed: $(tail -n 2 "$WORK/websocketd.log" | tr '\n' ' ')"
    fi
    kill "$WSD_PID" 2>/dev/null || true
    wait "$WSD_PID" 2>/dev/null || true # killed by our TERM: not a failure
    WSD_PID=""
fi

if [ "$SBXD_OK" = 1 ]; then
    WS_URL="ws://127.0.0.1:$SBXD_PORT/v1/sandboxes/bench/exec/ws"
    log "sbxd WebSocket streaming $STREAM_SIZE x$STREAM_RUNS"
    if stream_runs stream "$WS_URL" -c "$STREAM_CMD"; then
        WS_GBPS=$(median "${GBPS_RUNS[@]}")
        # the same through libwebsockets' own client, which parses payload a
        # byte at a time: a cross-check, bound by that client's CPU
        lws_note="not measured"
        if out=$(timeout "$STEP_TIMEOUT" "$OUT/wsbench" stream -k lws -u "$WS_URL" \
                -c "$STREAM_CMD" -e "$STREAM_BYTES"); then
            lws_note="$(field "$out" gbps) GB/s"
        fi
        row_raw "$WS_WHAT" "**$WS_GBPS GB/s**" "-" "median of $STREAM_RUNS runs (GB/s: ${GBPS_RUNS[*]}), start message to exited, every byte counted and stdout offsets checked, plain-socket client reading 1 MiB at a time; libwebsockets' client (client-CPU-bound): $lws_note"
    else
        row_failed "$WS_WHAT" "wsbench stream failed (see stderr)"
    fi

    log "sbxd WebSocket time to first byte x$TTFB_RUNS"
    if out=$(timeout "$STEP_TIMEOUT" "$OUT/wsbench" ttfb -u "$WS_URL" -c "echo x" \
            -n "$TTFB_RUNS" -w 5); then
        TTFB_LINE=$out
        row_from "$TTFB_WHAT" "$out" "$TTFB_RUNS runs after 5 warm-up, a new connection each (connect not timed), start message written to first stdout frame, errors: $(field "$out" errors)"
    else
        row_failed "$TTFB_WHAT" "wsbench ttfb failed (see stderr)"
    fi
else
    row_failed "$WS_WHAT" "$SBXD_WHY"
    row_failed "$TTFB_WHAT" "$SBXD_WHY"
fi

# ---- the table -------------------------------------------------------------------------
echo
# the load average says whether something else shared the cores meanwhile
echo "sbx bench, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr), load average at start $LOAD_START, at end $(cut -d' ' -f1 /proc/loadavg)"
echo
echo "| what | p50 | p99 | notes |"
echo "|---|---|---|---|"
for r in "${ROWS[@]}"; do
    IFS=$US read -r w p50 p99 notes <<<"$r"
    echo "| $(cell "$w") | $p50 | $p99 | $(cell "$notes") |"
done
echo
if [ -n "$EXEC_LINE" ] && [ -n "$SPAWN_LINE" ]; then
    ratio=$(awk -v e="$(field "$EXEC_LINE" p50_ms)" -v s="$(field "$SPAWN_LINE" p50_ms)" \
        'BEGIN { printf "%.2f", e / s }')
else
    ratio="not measured"
fi
if [ -n "$CREATE_LINE" ]; then
    created="$(field "$CREATE_LINE" p50_ms) ms"
else
    created="not measured"
fi
echo "Targets: exec p50 within 2x of bare spawn (ratio: $ratio); create p50 under 30 ms (got: $created)."
if [ -n "$WS_GBPS" ] && [ -n "$WSD_GBPS" ]; then
    ws_ratio=$(awk -v a="$WS_GBPS" -v b="$WSD_GBPS" 'BEGIN { printf "%.2fx", a / b }')
else
    ws_ratio="not measured"
fi
ttfb="not measured"
[ -z "$TTFB_LINE" ] || ttfb="$(field "$TTFB_LINE" p50_ms) ms"
echo "Streaming targets: at least 1 GB/s (got: ${WS_GBPS:-not measured} GB/s; bare pipe ${PIPE_GBPS:-?} GB/s); at least 3x websocketd (ratio: $ws_ratio); first byte p50 under 2 ms (got: $ttfb)."
exit "$FAILED"

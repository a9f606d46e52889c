# Shared by bench/cache_*.sh (sourced, not run): tools, a release kiln, a `kiln up` and an nginx
# on loopback, each stopped by its PID when the script exits, and CPU pinning.
#
# Priority: NICE=-10 (as root) runs the servers, the load generators and the anchors at that
# nice level, so that other work on a shared machine disturbs the measurement less.
#
# CPUs: by default the server under test and the load generator share all CPUs, as they would
# on a real machine; nginx runs one worker process per CPU, Kiln's runtime one thread per CPU.
# PIN=1 runs the server on SERVER_CPUS (default 1) and the load generator on CLIENT_CPUS
# (default 0). Pinning isolates the two only on an otherwise idle machine: where other work
# shares the CPUs, a pinned server that sleeps between requests waits for its CPU on every
# wake-up, and the measure becomes one of scheduling latency. Whatever the mode, Kiln and nginx
# are started the same way, and the server's own CPU time is measured for each run, so that
# "requests (or bytes) per server CPU-second" compares the two even when the load generator,
# not the server, is the bottleneck.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# KILN=PATH measures that binary instead of building this checkout (e.g. a copy of an earlier
# build, to compare before and after a change in the same run conditions).
kiln=${KILN:-$repo/target/release/kiln}

# PIDs this script started, stopped on exit (newest first).
bench_pids=()
bench_work=""

bench_cleanup() {
    local i pid
    for ((i = ${#bench_pids[@]} - 1; i >= 0; i--)); do
        pid=${bench_pids[i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$bench_work" ] && [ -z "${KEEP:-}" ]; then
        chmod -R u+w "$bench_work" 2>/dev/null || true
        rm -rf "$bench_work"
    elif [ -n "$bench_work" ]; then
        echo "kept $bench_work" >&2
    fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# bench_workdir NAME: a fresh directory on disk (not tmpfs), removed on exit unless KEEP=1.
bench_workdir() {
    bench_work=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-$1.XXXXXX")
    # nginx's workers run as an unprivileged user and must be able to read Kiln's files.
    chmod 755 "$bench_work"
}

# need_tools CMD:PACKAGE...: installs the Debian packages of missing commands.
need_tools() {
    local spec missing=()
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]}..." >&2
    # Debian's packages do not start their services in containers (policy-rc.d); nginx is
    # started below by this script only, on its own configuration.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build_kiln() {
    if [ -n "${KILN:-}" ]; then
        echo "measuring $KILN" >&2
        return 0
    fi
    echo "building kiln (release)..." >&2
    cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin kiln
}

# Pinning prefixes, used as "${on_server[@]}" CMD... and "${on_client[@]}" CMD... (arrays, not
# functions, so that `$!` of a backgrounded server is the server's own PID: taskset execs).
on_any=()
if [ -n "${NICE:-}" ]; then
    on_any=(nice -n "$NICE")
fi
if [ "${PIN:-0}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    SERVER_CPUS=${SERVER_CPUS:-1}
    CLIENT_CPUS=${CLIENT_CPUS:-0}
    on_server=("${on_any[@]}" taskset -c "$SERVER_CPUS")
    on_client=("${on_any[@]}" taskset -c "$CLIENT_CPUS")
    pinning="server on CPU $SERVER_CPUS, load generator on CPU $CLIENT_CPUS"
else
    on_server=("${on_any[@]}")
    on_client=("${on_any[@]}")
    pinning="unpinned: server and load generator share $(nproc) CPUs"
fi
[ -n "${NICE:-}" ] && pinning+=", nice $NICE"
server_cpus=$("${on_server[@]}" nproc)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL: waits (at most 10 s) until URL answers.
wait_http() {
    for _ in $(seq 100); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "nothing answers at $1" >&2
    return 1
}

# start_kiln DATA_DIR: starts `kiln up` (pinned like every server) and sets kiln_pid, kiln_base
# (http://127.0.0.1:PORT) and kiln_data. Its log is DATA_DIR.log.
start_kiln() {
    kiln_data=$1
    local out=$1.stdout
    "${on_server[@]}" "$kiln" up --data-dir "$kiln_data" --listen 127.0.0.1:0 --workers 0 \
        >"$out" 2>"$1.log" </dev/null &
    kiln_pid=$!
    bench_pids+=("$kiln_pid")
    for _ in $(seq 200); do
        grep -q '^kiln: public key' "$out" 2>/dev/null && break
        kill -0 "$kiln_pid" 2>/dev/null || { cat "$1.log" >&2; return 1; }
        sleep 0.05
    done
    kiln_base=$(sed -n 's/^kiln: serving \(http:[^ ]*\).*/\1/p' "$out")
    [ -n "$kiln_base" ] || { echo "kiln up did not announce itself" >&2; cat "$1.log" >&2; return 1; }
}

# stop_pid PID: stops one process this script started.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}

# push_token: a new push token for cache main of the running kiln.
push_token() {
    "$kiln" token create --data-dir "$kiln_data" --cache main --perm push | tail -n 1
}

# start_nginx CACHE_ROOT: starts nginx (pinned like every server) serving CACHE_ROOT under
# /cache/ (so the URLs are Kiln's), with sendfile, keep-alive without a request cap and no access
# log. Sets nginx_pid and nginx_base.
start_nginx() {
    local root=$1 dir=$bench_work/nginx port workers
    port=$(free_port)
    workers=$server_cpus
    mkdir -p "$dir/logs" "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000000;
    client_body_temp_path $dir/tmp;
    proxy_temp_path $dir/tmp;
    fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp;
    scgi_temp_path $dir/tmp;
    types {
        text/x-nix-narinfo narinfo;
        application/x-nix-nar nar zst;
    }
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$port;
        location /cache/ { alias $root/; }
    }
}
EOF
    "${on_server[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' </dev/null &
    nginx_pid=$!
    bench_pids+=("$nginx_pid")
    nginx_base=http://127.0.0.1:$port
    wait_http "$nginx_base/cache/main/nix-cache-info"
}

# cpu_ticks PID: CPU time (user + system, in clock ticks) used so far by PID (all its threads)
# and its live children (nginx's workers).
cpu_ticks() {
    local pid total=0 t
    for pid in "$1" $(pgrep -P "$1" || true); do
        # Fields after the command name (which may contain spaces): utime is the 12th, stime the 13th.
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }') || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
clock_ticks=$(getconf CLK_TCK)

# ratio A B: A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

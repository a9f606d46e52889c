#!/usr/bin/env bash
# narinfo GETs per second: Kiln's cache against nginx serving the same narinfo files from disk.
#
# Builds kiln (release), adds N small store paths (text files, each referring to two earlier
# ones, written by `builtins.toFile`: nothing to build) to a throw-away chroot store, starts
# `kiln up` on a fresh data directory and pushes them with
# `nix copy --to '<cache>?compression=zstd'` and a push token. Kiln's storage directory is a
# static binary cache; nginx serves that directory (the very narinfo files Kiln wrote) under the
# same URLs. Both must answer every narinfo with the same bytes. Then wrk, keep-alive, the same
# threads/connections/duration for both, alternating Kiln and nginx, best of RUNS:
#   - spread: all N narinfos in a shuffled order (fixed seed), each wrk thread starting at
#     another place in it (bench/wrk_urls.lua), so consecutive requests name different paths;
#   - hot:    one narinfo over and over.
# Prints requests/s for each and the ratio kiln/nginx.
#
# The server and wrk share the CPUs (PIN=1 pins them apart; see bench/cache_common.sh), and each
# run also measures the server's CPU time: requests per server CPU-second is printed too.
# Everything is on 127.0.0.1; every wrk run stops after SECONDS_PER_RUN (and is killed 30 s later if
# it does not). Processes are stopped by PID and the work directory removed on exit (KEEP=1
# keeps it).
#
#   bench/cache_narinfo.sh [N=5000]
#   env: RUNS=3 SECONDS_PER_RUN=10 THREADS=2 CONNECTIONS=64 NICE= PIN=0 SERVER_CPUS=1 CLIENT_CPUS=0
set -euo pipefail
source "$(dirname "$0")/cache_common.sh"

count=${1:-5000}
runs=${RUNS:-3}
seconds=${SECONDS_PER_RUN:-10}
threads=${THREADS:-2}
connections=${CONNECTIONS:-64}
nix_opts=(--option substituters '')

need_tools nginx:nginx-light wrk:wrk taskset:util-linux curl:curl
build_kiln
bench_workdir narinfo
work=$bench_work

echo "adding $count paths to a chroot store..." >&2
store=$work/store
cat >"$work/paths.nix" <<EOF
let
  mk = i: builtins.toFile "bench-narinfo-\${toString i}"
    (if i == 0 then "path 0"
     else "path \${toString i} \${builtins.elemAt files (i / 2)} \${builtins.elemAt files (i / 3)}");
  files = builtins.genList mk $count;
in files
EOF
nix-instantiate "${nix_opts[@]}" --store "$store" --eval --strict --json --read-write-mode \
    "$work/paths.nix" \
    2>"$work/build.log" | python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)))' \
    >"$work/outs" || { tail -20 "$work/build.log" >&2; exit 1; }

start_kiln "$work/kiln"
token=$(push_token)
printf 'machine 127.0.0.1\nlogin kiln\npassword %s\n' "$token" >"$work/netrc"
echo "pushing them to $kiln_base/cache/main..." >&2
XDG_CACHE_HOME=$work/xdg nix copy "${nix_opts[@]}" --extra-experimental-features nix-command \
    --store "$store" --option netrc-file "$work/netrc" \
    --to "$kiln_base/cache/main?compression=zstd" $(cat "$work/outs") 2>"$work/copy.log" \
    || { tail -20 "$work/copy.log" >&2; exit 1; }

cache_dir=$kiln_data/cache
# Shuffled with a fixed seed, so that every run requests the paths in the same order.
(cd "$cache_dir/main" && ls -- *.narinfo) | sed 's|^|/cache/main/|' \
    | shuf --random-source=<(yes kiln) >"$work/urls"
n=$(wc -l <"$work/urls")
[ "$n" -eq "$count" ] || { echo "expected $count narinfo files in $cache_dir/main, found $n" >&2; exit 1; }

start_nginx "$cache_dir"

echo "checking that both serve the same $n narinfos..." >&2
# One keep-alive connection to each server: a curl per request would take minutes for thousands.
python3 - "$kiln_base" "$nginx_base" "$work/urls" <<'PY'
import http.client, sys, urllib.parse
def connect(base):
    u = urllib.parse.urlsplit(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)
kiln, nginx = connect(sys.argv[1]), connect(sys.argv[2])
def get(conn, url):
    conn.request("GET", url)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"{url}: answered {r.status}")
    return body
for url in open(sys.argv[3]).read().split():
    a, b = get(kiln, url), get(nginx, url)
    if a != b:
        sys.exit(f"{url} differs between kiln and nginx:\n{a.decode()}\n---\n{b.decode()}")
PY
hot=$(sed -n "$(( (n + 1) / 2 ))p" "$work/urls")

# load SECONDS PID BASE [wrk args...]: one wrk run against the server PID listening at BASE;
# prints "requests/s requests server-CPU-seconds". Fails on errors or non-2xx answers.
load() {
    local seconds=$1 pid=$2 base=$3 out=$work/wrk.out before after
    shift 3
    before=$(cpu_ticks "$pid")
    timeout --kill-after=5 $((seconds + 30)) \
        "${on_client[@]}" wrk -t "$threads" -c "$connections" -d "${seconds}s" "$@" >"$out"
    after=$(cpu_ticks "$pid")
    if grep -q 'Non-2xx or 3xx responses\|Socket errors' "$out"; then
        echo "wrk against $base reported errors:" >&2
        cat "$out" >&2
        return 1
    fi
    awk -v cpu="$(awk -v a="$after" -v b="$before" -v hz="$clock_ticks" 'BEGIN { print (a - b) / hz }')" '
        / requests in / { requests = $1 }
        /^Requests\/sec:/ { rate = $2 }
        END { print rate, requests, cpu }' "$out"
}

# best: the line with the highest first field.
best() { sort -g -k1,1 | tail -n 1; }

# variant NAME KILN-ARGS... :: NGINX-ARGS...: alternates the servers, best of $runs each (by
# requests/s); also keeps the requests per server CPU-second of that run.
declare -A rate per_cpu busy
variant() {
    local name=$1 k n i kiln_runs="" nginx_runs=""
    shift
    local kiln_args=() nginx_args=()
    while [ "$1" != :: ]; do kiln_args+=("$1"); shift; done
    shift
    nginx_args=("$@")
    # A short warm-up of each (connections, page cache, SQLite's cache).
    load 2 "$kiln_pid" "$kiln_base" "${kiln_args[@]}" >/dev/null
    load 2 "$nginx_pid" "$nginx_base" "${nginx_args[@]}" >/dev/null
    for i in $(seq "$runs"); do
        k=$(load "$seconds" "$kiln_pid" "$kiln_base" "${kiln_args[@]}")
        n=$(load "$seconds" "$nginx_pid" "$nginx_base" "${nginx_args[@]}")
        echo "  $name run $i: kiln $k, nginx $n (req/s, requests, server CPU s)" >&2
        kiln_runs+="$k"$'\n'
        nginx_runs+="$n"$'\n'
    done
    local server line
    for server in kiln nginx; do
        if [ $server = kiln ]; then line=$(printf '%s' "$kiln_runs" | best); else line=$(printf '%s' "$nginx_runs" | best); fi
        read -r r q c <<<"$line"
        rate[$name.$server]=$r
        per_cpu[$name.$server]=$(awk -v q="$q" -v c="$c" 'BEGIN { printf "%.0f", (c > 0) ? q / c : 0 }')
        busy[$name.$server]=$(awk -v c="$c" -v s="$seconds" -v n="$server_cpus" 'BEGIN { printf "%.0f", 100 * c / s / n }')
    done
}

echo "wrk: $threads threads, $connections connections, ${seconds}s, best of $runs; $pinning" >&2
variant spread -s "$repo/bench/wrk_urls.lua" "$kiln_base" -- "$work/urls" \
    :: -s "$repo/bench/wrk_urls.lua" "$nginx_base" -- "$work/urls"
variant hot "$kiln_base$hot" :: "$nginx_base$hot"

printf '%d narinfos (%d bytes in all); wrk -t%d -c%d -d%ds, best of %d; %s\n' "$n" \
    "$(cat "$cache_dir"/main/*.narinfo | wc -c)" "$threads" "$connections" "$seconds" "$runs" \
    "$pinning"
for v in spread hot; do
    printf '%-7s kiln %8.0f req/s (%6d req per CPU-s, server CPU %3d%%)   nginx %8.0f req/s (%6d req per CPU-s, %3d%%)   ratio kiln/nginx %s (per CPU-s %s)\n' "$v" \
        "${rate[$v.kiln]}" "${per_cpu[$v.kiln]}" "${busy[$v.kiln]}" \
        "${rate[$v.nginx]}" "${per_cpu[$v.nginx]}" "${busy[$v.nginx]}" \
        "$(ratio "${rate[$v.kiln]}" "${rate[$v.nginx]}")" "$(ratio "${per_cpu[$v.kiln]}" "${per_cpu[$v.nginx]}")"
done

#!/usr/bin/env bash
# NAR GET throughput: one large NAR file downloaded from Kiln's cache and from nginx serving the
# very same file.
#
# Builds kiln (release), starts `kiln up` on a fresh data directory, makes a NAR of SIZE_MIB
# random bytes (one file; random so that the stored .nar.zst is as large as the NAR) and uploads
# it through the upload API. Kiln's storage directory is a static binary cache; nginx (sendfile
# on) serves that directory, so both send the same file under the same URL. Both downloads are
# checked to be the stored file, byte for byte (SHA-256). Then, alternating Kiln and nginx,
# best of RUNS:
#   - single: one `curl -o /dev/null` download (keep-alive is irrelevant for one large file);
#   - parallel: STREAMS downloads at once.
# Prints MB/s for each (10^6 bytes per second), the server CPU time per GB, and the ratio
# kiln/nginx. Everything is on 127.0.0.1; each download is bounded by curl --max-time. The
# server and curl share the CPUs unless PIN=1 (bench/cache_common.sh).
#
#   bench/cache_nar.sh [SIZE_MIB=1024]
#   env: RUNS=3 STREAMS=4 NICE= PIN=0 KEEP=
set -euo pipefail
source "$(dirname "$0")/cache_common.sh"

size_mib=${1:-1024}
runs=${RUNS:-3}
streams=${STREAMS:-4}

need_tools nginx:nginx-light taskset:util-linux curl:curl
build_kiln
bench_workdir nar
work=$bench_work

echo "making a NAR of $size_mib MiB of random bytes..." >&2
mkdir "$work/tree"
head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/tree/blob"
"$kiln" nar pack "$work/tree/blob" >"$work/blob.nar"
rm -rf "$work/tree"

start_kiln "$work/kiln"
token=$(push_token)
# Any valid store path will do: the upload API takes the path's name from the client.
store_path=/nix/store/$(printf '%032d' 1)-bench-nar
echo "uploading it to $kiln_base/cache/main..." >&2
curl -sS -f -H 'Expect:' -H "Authorization: Bearer $token" -H "X-Kiln-Store-Path: $store_path" \
    -X POST -T "$work/blob.nar" "$kiln_base/api/v1/caches/main/upload" >"$work/upload.json"
rm -f "$work/blob.nar"
nar_url=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["url"])' "$work/upload.json")
file=$kiln_data/cache/main/$nar_url
bytes=$(stat -c %s "$file")

start_nginx "$kiln_data/cache"

echo "checking that both send the stored file ($bytes bytes)..." >&2
want=$(sha256sum <"$file" | cut -d' ' -f1)
for base in "$kiln_base" "$nginx_base"; do
    got=$(curl -sf --max-time 120 "$base/cache/main/$nar_url" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$base sent something else than $file" >&2; exit 1; }
done
cat "$file" >/dev/null

# fetch PID BASE N: N simultaneous downloads of the NAR from BASE (server PID); prints
# "MB/s server-CPU-seconds" over all of them.
fetch() {
    local pid=$1 base=$2 n=$3 before after t0 t1 i curls=()
    before=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    for i in $(seq "$n"); do
        "${on_client[@]}" curl -sf --max-time 300 -o /dev/null "$base/cache/main/$nar_url" &
        curls+=($!)
    done
    for i in "${curls[@]}"; do wait "$i" || { echo "a download from $base failed" >&2; return 1; }; done
    t1=$(date +%s.%N)
    after=$(cpu_ticks "$pid")
    awk -v b="$bytes" -v n="$n" -v t0="$t0" -v t1="$t1" -v a="$after" -v c="$before" -v hz="$clock_ticks" \
        'BEGIN { printf "%.1f %.2f\n", n * b / 1e6 / (t1 - t0), (a - c) / hz }'
}

best() { sort -g -k1,1 | tail -n 1; }

declare -A mbps cpu_per_gb
variant() {
    local name=$1 n=$2 k m i kiln_runs="" nginx_runs="" server line r c
    fetch "$kiln_pid" "$kiln_base" 1 >/dev/null
    fetch "$nginx_pid" "$nginx_base" 1 >/dev/null
    for i in $(seq "$runs"); do
        k=$(fetch "$kiln_pid" "$kiln_base" "$n")
        m=$(fetch "$nginx_pid" "$nginx_base" "$n")
        echo "  $name run $i: kiln $k, nginx $m (MB/s, server CPU s)" >&2
        kiln_runs+="$k"$'\n'
        nginx_runs+="$m"$'\n'
    done
    for server in kiln nginx; do
        if [ $server = kiln ]; then line=$(printf '%s' "$kiln_runs" | best); else line=$(printf '%s' "$nginx_runs" | best); fi
        read -r r c <<<"$line"
        mbps[$name.$server]=$r
        cpu_per_gb[$name.$server]=$(awk -v c="$c" -v b="$bytes" -v n="$n" 'BEGIN { printf "%.2f", c / (n * b / 1e9) }')
    done
}

echo "downloads: best of $runs; $pinning" >&2
variant single 1
variant parallel "$streams"

printf 'NAR file %d bytes (%.0f MiB); best of %d; %s\n' "$bytes" "$(awk -v b="$bytes" 'BEGIN { print b / 1048576 }')" \
    "$runs" "$pinning"
for v in single parallel; do
    label=$v
    [ $v = parallel ] && label="${streams}x"
    printf '%-7s kiln %7.0f MB/s (server %s CPU-s/GB)   nginx %7.0f MB/s (%s CPU-s/GB)   ratio kiln/nginx %s\n' "$label" \
        "${mbps[$v.kiln]}" "${cpu_per_gb[$v.kiln]}" "${mbps[$v.nginx]}" "${cpu_per_gb[$v.nginx]}" \
        "$(ratio "${mbps[$v.kiln]}" "${mbps[$v.nginx]}")"
done

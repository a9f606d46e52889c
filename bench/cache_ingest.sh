#!/usr/bin/env bash
# Upload ingest (hash + zstd + store) of a 1 GiB NAR against `zstd -T0` compressing the same
# bytes to a file on the same disk.
#
# Builds kiln (release) and the ingest pipeline's bench program (cache/benches/ingest.rs), makes
# a tree of SIZE_MIB of real files copied from this machine's /usr (executables, libraries, data:
# a realistic mix for zstd, unlike random or zero bytes) and packs it into a NAR. Starts `kiln up`
# on a fresh data directory and, alternating, best of RUNS:
#   - pipeline: the NAR fed from the file into the code behind the upload API (validate, hash,
#     zstd, write, fsync, rename into place), in one process: the same work on the same bytes as
#     zstd does, which is the comparison the goal is about;
#   - upload: the whole upload over HTTP, `curl -X POST -T NAR` (streamed; `--data-binary @NAR`
#     would load it into memory) to POST /api/v1/caches/main/upload with a push token, a new
#     store path each run (a path already served is not read again), timed until the answer
#     (201: stored, fsynced, indexed and published); the answer's NarHash and NarSize are
#     checked against the NAR. Kiln also receives the body over TCP here, and shares the CPUs
#     with curl sending it;
#   - zstd: `zstd -T0 -3` (level 3 is also Kiln's default `cache.zstd_level`) from the NAR to a
#     file next to Kiln's storage, and the same followed by an fsync of the output (`sync FILE`),
#     since Kiln's answer means the NAR is on disk.
# Prints seconds, MB/s (NAR bytes, 10^6 per second) and CPU-seconds of each, and the ratios
# kiln/zstd. Everything is on 127.0.0.1. KILN=PATH measures that binary for the upload; the
# pipeline is always this checkout's.
#
#   bench/cache_ingest.sh [SIZE_MIB=1024]
#   env: RUNS=5 NICE= KEEP=
set -euo pipefail
source "$(dirname "$0")/cache_common.sh"

size_mib=${1:-1024}
runs=${RUNS:-5}

need_tools zstd:zstd curl:curl
build_kiln
echo "building the ingest pipeline's bench program..." >&2
pipeline=$(cargo bench --quiet --manifest-path "$repo/Cargo.toml" -p kiln-cache --bench ingest \
    --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ingest" and m.get("executable"):
        print(m["executable"])')
[ -x "$pipeline" ] || { echo "could not build cache/benches/ingest.rs" >&2; exit 1; }
bench_workdir ingest
work=$bench_work

echo "copying $size_mib MiB of files from /usr..." >&2
python3 - "$work/tree" $((size_mib * 1024 * 1024)) <<'PY'
import os, shutil, sys
dest, budget = sys.argv[1], int(sys.argv[2])
total = 0
for top in ("/usr/lib", "/usr/bin", "/usr/share", "/usr/libexec", "/usr/sbin", "/usr/include"):
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            src = os.path.join(root, name)
            if os.path.islink(src) or not os.path.isfile(src) or not os.access(src, os.R_OK):
                continue
            size = os.path.getsize(src)
            if total + size > budget:
                continue
            dst = os.path.join(dest, os.path.relpath(src, "/usr"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o755 if os.access(src, os.X_OK) else 0o644)
            total += size
            if total >= budget - 4096:
                sys.exit(0)
if total < budget // 2:
    sys.exit(f"only {total} bytes of files found under /usr")
PY
nar=$work/tree.nar
"$kiln" nar pack "$work/tree" >"$nar"
nar_bytes=$(stat -c %s "$nar")
nar_hash=$("$kiln" nar hash "$work/tree")
files=$(find "$work/tree" -type f | wc -l)
rm -rf "$work/tree"
cat "$nar" >/dev/null

start_kiln "$work/kiln"
token=$(push_token)

# kiln_ingest I: uploads the NAR as the I-th store path; prints seconds, then the CPU-seconds
# the server used meanwhile.
kiln_ingest() {
    local path out=$work/upload.json stats ticks
    path=/nix/store/$(printf '%032d' "$1")-bench-ingest
    ticks=$(cpu_ticks "$kiln_pid")
    stats=$("${on_client[@]}" curl -sS --max-time 600 -o "$out" -w '%{http_code} %{time_total}' \
        -H 'Expect:' -H "Authorization: Bearer $token" -H "X-Kiln-Store-Path: $path" \
        -X POST -T "$nar" "$kiln_base/api/v1/caches/main/upload")
    python3 - "$out" "$nar_hash" "$nar_bytes" "${stats%% *}" <<'PY' >&2
import json, sys
out, want_hash, want_size, status = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if status != "201":
    sys.exit(f"upload answered {status}: {open(out).read()}")
got = json.load(open(out))
if got["nar_hash"] != want_hash or got["nar_size"] != want_size:
    sys.exit(f"kiln measured {got['nar_hash']} / {got['nar_size']}, expected {want_hash} / {want_size}")
PY
    ticks=$(($(cpu_ticks "$kiln_pid") - ticks))
    echo "${stats#* } $(awk -v t="$ticks" -v hz="$clock_ticks" 'BEGIN { printf "%.2f", t / hz }')"
}

# pipeline_ingest: the NAR through the ingest pipeline into a local store next to Kiln's;
# prints seconds, then the CPU-seconds of the process.
pipeline_ingest() {
    local wall cpu hash size
    read -r wall cpu hash size _ < <("${on_any[@]}" "$pipeline" "$nar" "$work/pipeline-store" 3 1)
    if [ "$hash" != "$nar_hash" ] || [ "$size" != "$nar_bytes" ]; then
        echo "the pipeline measured $hash / $size, expected $nar_hash / $nar_bytes" >&2
        return 1
    fi
    echo "$wall $cpu"
}

# zstd_ingest [sync]: compresses the NAR next to Kiln's storage; prints seconds, then zstd's
# CPU-seconds.
zstd_ingest() {
    local out=$kiln_data/zstd-out.nar.zst t0 t1 TIMEFORMAT='%U %S'
    rm -f "$out"
    t0=$(date +%s.%N)
    { time "${on_any[@]}" zstd -T0 -3 -q -f "$nar" -o "$out"; } 2>"$work/zstd.time"
    if [ "${1:-}" = sync ]; then sync "$out"; fi
    t1=$(date +%s.%N)
    stat -c %s "$out" >"$work/zstd.size"
    rm -f "$out"
    awk -v a="$t0" -v b="$t1" '{ printf "%.3f %.2f\n", b - a, $1 + $2 }' "$work/zstd.time"
}

fastest() { sort -g | head -n 1; }

echo "ingesting $nar_bytes bytes, best of $runs..." >&2
kiln_times="" pipeline_times="" zstd_times="" zstd_sync_times=""
for i in $(seq "$runs"); do
    out=$(pipeline_ingest) && read -r p p_cpu <<<"$out"
    out=$(kiln_ingest "$i") && read -r k k_cpu <<<"$out"
    out=$(zstd_ingest) && read -r z z_cpu <<<"$out"
    out=$(zstd_ingest sync) && read -r zs _ <<<"$out"
    echo "  run $i: pipeline $p s ($p_cpu CPU-s), upload $k s (server $k_cpu CPU-s)," \
        "zstd -T0 $z s ($z_cpu CPU-s), zstd -T0 + fsync $zs s" >&2
    pipeline_times+="$p $p_cpu"$'\n'
    kiln_times+="$k $k_cpu"$'\n'
    zstd_times+="$z $z_cpu"$'\n'
    zstd_sync_times+="$zs"$'\n'
done
# fastest: the fastest run's line ("seconds [CPU-seconds]").
fastest() { sort -g | head -n 1; }
read -r pipeline_best pipeline_cpu <<<"$(printf '%s' "$pipeline_times" | fastest)"
read -r kiln_best kiln_cpu <<<"$(printf '%s' "$kiln_times" | fastest)"
read -r zstd_best zstd_cpu <<<"$(printf '%s' "$zstd_times" | fastest)"
zstd_sync_best=$(printf '%s' "$zstd_sync_times" | fastest)
zstd_bytes=$(cat "$work/zstd.size")
kiln_file=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["file_size"])' "$work/upload.json")

mb() { awk -v n="$nar_bytes" -v t="$1" 'BEGIN { printf "%.1f", n / 1e6 / t }'; }
printf 'NAR %d bytes (%d files from /usr), zstd -3: kiln stores %d bytes, zstd writes %d; best of %d; %d CPUs, nice %s\n' \
    "$nar_bytes" "$files" "$kiln_file" "$zstd_bytes" "$runs" "$(nproc)" "${NICE:-0}"
printf '%-36s %7.3f s %8s MB/s %6s CPU-s\n' "kiln ingest pipeline" "$pipeline_best" "$(mb "$pipeline_best")" "$pipeline_cpu"
printf '%-36s %7.3f s %8s MB/s %6s CPU-s\n' "kiln upload API over HTTP (server)" "$kiln_best" "$(mb "$kiln_best")" "$kiln_cpu"
printf '%-36s %7.3f s %8s MB/s %6s CPU-s\n' "zstd -T0 -3" "$zstd_best" "$(mb "$zstd_best")" "$zstd_cpu"
printf '%-36s %7.3f s %8s MB/s\n' "zstd -T0 -3 + fsync" "$zstd_sync_best" "$(mb "$zstd_sync_best")"
printf 'ratio pipeline/zstd: %s (against zstd + fsync: %s)\n' "$(ratio "$zstd_best" "$pipeline_best")" \
    "$(ratio "$zstd_sync_best" "$pipeline_best")"
printf 'ratio upload/zstd: %s (against zstd + fsync: %s)\n' "$(ratio "$zstd_best" "$kiln_best")" \
    "$(ratio "$zstd_sync_best" "$kiln_best")"

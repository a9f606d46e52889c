#!/usr/bin/env bash
# NAR hashing throughput: `kiln nar hash` against `sha256sum` over the same bytes.
#
# Builds kiln in release mode, creates a ~1 GiB tree (large files, medium files, many small files
# in nested directories, symlinks), warms the page cache, then times:
#   - kiln nar hash TREE            the figure that matters
#   - sha256sum NAR                 NAR = the tree packed once with `kiln nar pack`: the very bytes
#                                   the hasher sees, so the ratio isolates Kiln's overhead
#   - kiln nar pack TREE >/dev/null packing without hashing
#   - nix hash path TREE            an extra anchor
# Each is run $RUNS times (default 3); the best run counts. MB/s is NAR bytes / 10^6 / seconds.
#
# The tree is kept in $KILN_BENCH_DIR (default ${TMPDIR:-/var/tmp}/kiln-bench-nar-hash) and reused
# by later runs; the packed NAR is always deleted. `--clean` deletes the tree too.
#
# Usage: bench/nar_hash.sh [--clean]
set -euo pipefail

clean=0
for arg in "$@"; do
    case "$arg" in
        --clean) clean=1 ;;
        *) echo "usage: $0 [--clean]" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${KILN_BENCH_DIR:-${TMPDIR:-/var/tmp}/kiln-bench-nar-hash}
tree=$dir/tree
nar=$dir/tree.nar
runs=${RUNS:-3}

cleanup() {
    rm -f "$nar"
    if [ "$clean" = 1 ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT

echo "building kiln (release)..." >&2
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin kiln
kiln=$repo/target/release/kiln

# Layout version: bump it when the generator changes so that an old tree is not reused.
layout=v1
if [ ! -f "$dir/tree.$layout.done" ]; then
    echo "creating the tree in $tree..." >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    python3 - "$tree" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(1)
MiB = 1024 * 1024
chunk = os.urandom(4 * MiB)  # random data, reused with varying offsets so files differ

def write(path, size, mode=0o644):
    with open(path, "wb") as f:
        left = size
        while left:
            start = rng.randrange(0, len(chunk) // 2)
            n = min(left, len(chunk) - start)
            f.write(chunk[start:start + n])
            left -= n
    os.chmod(path, mode)

os.makedirs(f"{root}/large")
for i in range(6):                        # 6 x 100 MiB + a few bytes
    write(f"{root}/large/blob-{i}", 100 * MiB + i * 3, 0o755 if i % 2 else 0o644)
os.makedirs(f"{root}/medium")
for i in range(64):                       # 64 x ~4 MiB
    write(f"{root}/medium/part-{i:02}", 4 * MiB + rng.randrange(0, 65536))
for d in range(400):                      # 400 directories x 60 small files, 0.1-30 KiB
    sub = f"{root}/small/{d // 20:02}/dir-{d:03}"
    os.makedirs(sub)
    for i in range(60):
        write(f"{sub}/file-{i:02}.txt", rng.randrange(100, 30 * 1024), 0o755 if i % 7 == 0 else 0o644)
    os.symlink(f"file-00.txt", f"{sub}/link")
    os.symlink("/nix/store/absent", f"{sub}/abs-link")
PY
    touch "$dir/tree.$layout.done"
fi

echo "packing the tree once and warming the page cache..." >&2
"$kiln" nar pack "$tree" >"$nar"
cat "$nar" >/dev/null
"$kiln" nar pack "$tree" >/dev/null
bytes=$(stat -c %s "$nar")
files=$(find "$tree" -type f | wc -l)

# best_of CMD...: runs CMD $runs times, prints the best wall time in seconds.
best_of() {
    local best="" t0 t1 t
    for _ in $(seq "$runs"); do
        t0=$(date +%s.%N)
        "$@" >/dev/null
        t1=$(date +%s.%N)
        t=$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.4f", a - b }')
        if [ -z "$best" ] || awk -v t="$t" -v b="$best" 'BEGIN { exit !(t < b) }'; then best=$t; fi
    done
    echo "$best"
}

pack_to_null() { "$kiln" nar pack "$tree" >/dev/null; }

t_kiln=$(best_of "$kiln" nar hash "$tree")
t_sha=$(best_of sha256sum "$nar")
t_pack=$(best_of pack_to_null)
t_nix=$(best_of nix hash path --extra-experimental-features nix-command --option substituters '' "$tree")

# The figures only mean something if the hashes agree.
kiln_hash=$("$kiln" nar hash "$tree")
nix_hash=$(nix hash path --extra-experimental-features nix-command --option substituters '' \
    --type sha256 --base32 "$tree")
if [ "$kiln_hash" != "sha256:$nix_hash" ]; then
    echo "hash mismatch: kiln $kiln_hash, nix sha256:$nix_hash" >&2
    exit 1
fi

mbps() { awk -v n="$bytes" -v t="$1" 'BEGIN { printf "%.1f", n / 1000000 / t }'; }
printf 'tree: %s files, NAR %d bytes (%.1f MiB), best of %d runs\n' \
    "$files" "$bytes" "$(awk -v n="$bytes" 'BEGIN { print n / 1048576 }')" "$runs"
printf '%-28s %8.3f s %9s MB/s\n' "kiln nar hash" "$t_kiln" "$(mbps "$t_kiln")"
printf '%-28s %8.3f s %9s MB/s\n' "sha256sum (packed NAR)" "$t_sha" "$(mbps "$t_sha")"
printf '%-28s %8.3f s %9s MB/s\n' "kiln nar pack > /dev/null" "$t_pack" "$(mbps "$t_pack")"
printf '%-28s %8.3f s %9s MB/s\n' "nix hash path" "$t_nix" "$(mbps "$t_nix")"
printf 'ratio kiln nar hash / sha256sum: %.2fx\n' "$(awk -v s="$t_sha" -v k="$t_kiln" 'BEGIN { print s / k }')"

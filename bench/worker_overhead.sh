#!/usr/bin/env bash
# Per-step overhead of the worker: N trivial sandboxed derivations run as steps on one executor
# (`kiln-worker`, through `nix-store --serve`, each output and log uploaded to a local
# `kiln up --workers 0` cache) against `nix-build -j SLOTS` of the same derivations in a fresh
# chroot store with the same sandbox settings and no substituters.
#
# Both sides build the very same .drv files (same output paths) in stores of their own, each
# starting empty. The executor side includes what a farm worker really does per step: checking
# the message, building, querying the path infos, packing and uploading the output NAR and the
# log; it excludes evaluation (the coordinator's job). The nix-build side includes evaluating
# the small expression, which is a few milliseconds.
#
# Usage: bench/worker_overhead.sh          (N=100 SLOTS=1 RUNS=3 PROFILE=release by default)
set -euo pipefail

n=${N:-100}
slots=${SLOTS:-1}
runs=${RUNS:-3}
profile=${PROFILE:-release}
repo=$(cd "$(dirname "$0")/.." && pwd)
sandbox=(--option sandbox true --option sandbox-paths "/bin/sh=/bin/busybox /bin/busybox")

flag=()
dir_profile=debug
if [ "$profile" = release ]; then flag=(--release); dir_profile=release; fi
echo "building kiln and the bench driver ($profile)..." >&2
cargo build "${flag[@]}" --quiet --manifest-path "$repo/Cargo.toml" --bin kiln
cargo build "${flag[@]}" --quiet --manifest-path "$repo/Cargo.toml" -p kiln-worker --example worker_overhead
kiln=$repo/target/$dir_profile/kiln
driver=$repo/target/$dir_profile/examples/worker_overhead

work=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-worker.XXXXXX")
kiln_pid=
cleanup() {
    if [ -n "$kiln_pid" ]; then kill "$kiln_pid" 2>/dev/null || true; wait "$kiln_pid" 2>/dev/null || true; fi
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$kiln" up --listen 127.0.0.1:0 --workers 0 --data-dir "$work/data" >"$work/up.out" 2>"$work/up.log" &
kiln_pid=$!
for _ in $(seq 100); do
    [ "$(wc -l <"$work/up.out")" -ge 3 ] && break
    sleep 0.1
done
base=$(sed -n 's/^kiln: serving \([^ ]*\).*/\1/p' "$work/up.out")
substituter=$(sed -n 's/^kiln: substituter //p' "$work/up.out")
key=$(sed -n 's/^kiln: public key //p' "$work/up.out")
token=$("$kiln" token create --data-dir "$work/data" --cache main --perm push | tail -n1)
[ -n "$base" ] && [ -n "$key" ] && [ -n "$token" ] || { echo "kiln up did not start" >&2; cat "$work/up.log" >&2; exit 1; }

# N independent trivial derivations, unique to this run.
expr() {
    local tag=$1
    echo "builtins.genList (i: derivation { name = \"trivial-$tag-\${toString i}\"; system = builtins.currentSystem;"
    echo "  builder = \"/bin/sh\"; args = [ \"-c\" \"echo \${toString i} > \$out\" ]; }) $n"
}

printf '%-4s %12s %12s %14s %14s %8s\n' run kiln_s nix_build_s kiln_ms/step nix_ms/step ratio
best_k=; best_n=
for run in $(seq "$runs"); do
    tag=$(date +%s%N)-$run
    expr "$tag" >"$work/bench-$run.nix"
    coord=$work/coord-$run
    mapfile -t drvs < <(nix-instantiate --store "$coord" --option substituters '' "$work/bench-$run.nix" 2>/dev/null)

    out=$("$driver" --base "$base" --substituter "$substituter" --key "$key" --token "$token" \
        --coord-store "$coord" --store "$work/worker-$run" --slots "$slots" "${drvs[@]}")
    k=$(sed -n 's/.* wall_s=\([0-9.]*\).*/\1/p' <<<"$out")

    start=$(date +%s.%N)
    nix-build --store "$work/nixbuild-$run" --option substituters '' "${sandbox[@]}" \
        -j "$slots" --no-out-link "$work/bench-$run.nix" >/dev/null 2>"$work/nix-build.log"
    end=$(date +%s.%N)
    nb=$(echo "$end - $start" | bc -l)

    printf '%-4s %12.3f %12.3f %14.1f %14.1f %8.2f\n' "$run" "$k" "$nb" \
        "$(echo "$k * 1000 / $n" | bc -l)" "$(echo "$nb * 1000 / $n" | bc -l)" "$(echo "$k / $nb" | bc -l)"
    if [ -z "$best_k" ] || (( $(echo "$k < $best_k" | bc -l) )); then best_k=$k; fi
    if [ -z "$best_n" ] || (( $(echo "$nb < $best_n" | bc -l) )); then best_n=$nb; fi
done
echo "best of $runs, N=$n, slots/-j=$slots: kiln-worker ${best_k}s, nix-build ${best_n}s," \
    "ratio $(printf '%.2f' "$(echo "$best_k / $best_n" | bc -l)")," \
    "overhead per step $(printf '%.1f' "$(echo "($best_k - $best_n) * 1000 / $n" | bc -l)") ms"

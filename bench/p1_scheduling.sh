#!/usr/bin/env bash
# P1 scheduling quality: makespan of DAGs whose steps sleep known durations, on 2 and 4 workers,
# against the lower bound max(critical path, total work / workers), with `nix-build -j W` on the
# same DAG beside it.
#
# DAGs (generated deterministically):
#   chain   a chain of 6 steps of 3 s hidden among 24 independent steps of 1 s, named so that
#           name order puts the chain last (critical path 18 s, work 42 s)
#   layered 5 layers of 6 steps of 1-4 s, each needing 1-2 steps of the layer before (seed 7)
# Kiln runs each DAG in a fresh data directory (first run: no history, every estimate 1 s); the
# layered DAG then runs again with new derivations of the same names in the same farm ("with
# history": estimates from the first run). Kiln's makespan is measured from the end of ingest to
# the last build; the total from the API request is shown too. nix-build's time includes its
# evaluation (well under a second here).
#
# Usage: bench/p1_scheduling.sh   (needs Nix, busybox, curl, python3)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-p1.XXXXXX")
. "$repo/bench/farm_lib.sh"
trap 'stop_kiln; rm -rf "$work"' EXIT

echo "building kiln (release)..." >&2
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin kiln

# dag KIND SALT DIR: writes DIR/release.nix; prints "critical_path total_work" in seconds.
dag() {
    python3 - "$@" <<'PY'
import random, sys
kind, salt, out = sys.argv[1], sys.argv[2], sys.argv[3]
nodes = []  # (attr, seconds, deps)
if kind == "chain":
    for i in range(24):
        nodes.append((f"a{i:02d}", 1, []))
    for i in range(6):
        nodes.append((f"z-chain-{i}", 3, [f"z-chain-{i-1}"] if i else []))
else:
    rng = random.Random(7)
    prev = []
    for layer in range(5):
        cur = []
        for j in range(6):
            name = f"l{layer}n{j}"
            deps = rng.sample(prev, rng.randint(1, 2)) if prev else []
            nodes.append((name, rng.randint(1, 4), deps))
            cur.append(name)
        prev = cur
secs = {n: s for n, s, _ in nodes}
deps = {n: d for n, _, d in nodes}
cp = {}
for n, s, d in nodes:
    cp[n] = s + max((cp[x] for x in d), default=0)
lines = ["{ system ? builtins.currentSystem }:", "let",
         "  mk = name: secs: deps: derivation ({ inherit name system; builder = \"/bin/sh\";",
         f"    salt = \"{salt}\";",
         "    args = [ \"-c\" \"/bin/busybox sleep ${toString secs}; echo ${name} > $out\" ]; } // deps);"]
for n, s, d in nodes:
    dep_attrs = " ".join(f'"{x}" = {x.replace("-", "_")};' for x in d)
    lines.append(f'  {n.replace("-", "_")} = mk "{n}" {s} {{ {dep_attrs} }};')
lines.append("in {")
for n, _, _ in nodes:
    lines.append(f'  "{n}" = {n.replace("-", "_")};')
lines.append("}")
open(f"{out}/release.nix", "w").write("\n".join(lines) + "\n")
print(max(cp.values()), sum(secs.values()))
PY
}

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

printf '%-8s %2s  %6s %6s  %-22s %8s %7s  %8s %7s\n' dag W cp work kiln_run kiln_s /bound nix_s /bound
for kind in chain layered; do
    for workers in 2 4; do
        dir=$work/$kind-$workers
        mkdir -p "$dir"
        read -r cp total < <(dag "$kind" "first-$workers" "$dir")
        bound=$(python3 -c "print(max($cp, $total / $workers))")
        git_repo "$dir"
        nix_s=$(nix_build "$workers" "$dir" "$work/nix-$kind-$workers")
        start_kiln "$workers" "$work/kiln-$kind-$workers"
        read -r kiln_total kiln_build < <(kiln_eval "$kind" "$dir")
        printf '%-8s %2s  %6s %6s  %-22s %8s %7s  %8s %7s\n' "$kind" "$workers" "$cp" "$total" \
            "first (total $kiln_total)" "$kiln_build" "$(ratio "$kiln_build" "$bound")" "$nix_s" "$(ratio "$nix_s" "$bound")"
        if [ "$kind" = layered ]; then
            dag "$kind" "second-$workers" "$dir" > /dev/null
            git_repo "$dir"
            read -r kiln_total kiln_build < <(kiln_eval "$kind" "$dir")
            printf '%-8s %2s  %6s %6s  %-22s %8s %7s\n' "$kind" "$workers" "$cp" "$total" \
                "history (total $kiln_total)" "$kiln_build" "$(ratio "$kiln_build" "$bound")"
        fi
        stop_kiln
    done
done

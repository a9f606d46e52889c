#!/usr/bin/env bash
# Benchmark: `kiln drv show` against `nix show-derivation` on the same 10 000 .drv files.
#
# Builds kiln (release), instantiates N small derivations (each depending on an earlier one, so
# inputDrvs are not empty) into a throw-away chroot store, then times both tools over all the
# files in one invocation each (best of R runs, page cache warm), checks that they print the same
# bytes, and prints files/s for each and the ratio. Everything lives in a temporary directory
# that is removed on exit.
#
#   bench/drv_parse.sh [N=10000] [R=3]
set -euo pipefail
cd "$(dirname "$0")/.."

count=${1:-10000}
runs=${2:-3}
nix_opts=(--option substituters '' --extra-experimental-features nix-command)

work=$(mktemp -d)
cleanup() {
  # Store paths are read-only; make them removable first.
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "building kiln (release)..." >&2
cargo build --release --quiet --bin kiln
kiln=$PWD/target/release/kiln

store=$work/store
cat >"$work/drvs.nix" <<EOF
let
  mk = i: derivation ({
    name = "bench-\${toString i}";
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "echo \${toString i} > \$out" ];
    index = toString i;
    description = "derivation number \${toString i} of the benchmark\nwith a second line";
  } // (if i == 0 then { } else { dep = builtins.elemAt drvs (i / 2); }));
  drvs = builtins.genList mk $count;
in drvs
EOF

echo "instantiating $count derivations into $store..." >&2
start=$(date +%s.%N)
nix-instantiate "${nix_opts[@]}" --store "$store" "$work/drvs.nix" >"$work/paths" 2>"$work/instantiate.log"
end=$(date +%s.%N)
n=$(wc -l <"$work/paths")
[ "$n" -eq "$count" ] || { echo "expected $count .drv paths, got $n" >&2; cat "$work/instantiate.log" >&2; exit 1; }
printf "instantiated in %.1f s\n" "$(echo "$end - $start" | bc)" >&2

# kiln reads the files where the chroot store keeps them; Nix reads them through --store.
sed "s|^/nix/store/|$store/nix/store/|" "$work/paths" >"$work/files"
xargs -a "$work/files" cat >/dev/null

best() { # best wall time in seconds over $runs runs of the command, its output kept in $1
  local out=$1 best_time="" t0 t1 t
  shift
  for _ in $(seq "$runs"); do
    t0=$(date +%s.%N)
    "$@" >"$out"
    t1=$(date +%s.%N)
    t=$(echo "$t1 - $t0" | bc)
    if [ -z "$best_time" ] || [ "$(echo "$t < $best_time" | bc)" = 1 ]; then best_time=$t; fi
  done
  echo "$best_time"
}

# One invocation each, all files on the command line (10 000 paths fit in ARG_MAX).
mapfile -t files <"$work/files"
mapfile -t paths <"$work/paths"
kiln_time=$(best "$work/kiln.json" "$kiln" drv show "${files[@]}")
nix_time=$(best "$work/nix.json" nix show-derivation "${nix_opts[@]}" --store "$store" "${paths[@]}")

if ! cmp -s "$work/kiln.json" "$work/nix.json"; then
  echo "kiln and nix printed different JSON" >&2
  diff <(head -c 2000 "$work/kiln.json") <(head -c 2000 "$work/nix.json") >&2 || true
  exit 1
fi

printf 'files: %d (identical JSON, %d bytes)\n' "$count" "$(wc -c <"$work/kiln.json")"
printf 'kiln drv show:        %8.3f s  %10.0f files/s\n' "$kiln_time" "$(echo "$count / $kiln_time" | bc -l)"
printf 'nix show-derivation:  %8.3f s  %10.0f files/s\n' "$nix_time" "$(echo "$count / $nix_time" | bc -l)"
printf 'ratio (kiln/nix throughput): %.1fx\n' "$(echo "$nix_time / $kiln_time" | bc -l)"

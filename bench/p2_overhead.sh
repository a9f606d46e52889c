#!/usr/bin/env bash
# P2 overhead: 500 trivial sandboxed derivations (independent; each writes one line) on 2
# workers, against `nix-build -j2` with the same sandbox settings into a fresh chroot store, in
# the same run. Kiln's time runs from the API request (evaluation included, as nix-build's
# includes its own) to the last build; the build phase alone (after ingest) is shown too.
#
# Usage: bench/p2_overhead.sh [N]   (default 500; needs Nix, busybox, curl, python3)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-p2.XXXXXX")
. "$repo/bench/farm_lib.sh"
trap 'stop_kiln; rm -rf "$work"' EXIT
n=${1:-500}

echo "building kiln (release)..." >&2
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin kiln

mkdir -p "$work/nix" "$work/kiln"
trivial_expr nix "$n" > "$work/nix/release.nix"
trivial_expr kiln "$n" > "$work/kiln/release.nix"
git_repo "$work/kiln"
nix_s=$(nix_build 2 "$work/nix" "$work/nix-store")
start_kiln 2 "$work/kiln-data"
read -r kiln_total kiln_build < <(kiln_eval trivial "$work/kiln")
stop_kiln
echo "derivations: $n, workers: 2"
echo "nix-build -j2:          ${nix_s} s"
echo "kiln up (total):        ${kiln_total} s   ratio $(python3 -c "print(f'{$kiln_total / $nix_s:.2f}')")"
echo "kiln up (build phase):  ${kiln_build} s"

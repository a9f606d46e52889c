#!/usr/bin/env bash
# P2 overhead on the distributed stack: the same N trivial sandboxed derivations as
# bench/p2_overhead.sh, built in one run by `nix-build -j2` (fresh chroot store), by `kiln up` with
# 2 workers, and by the distributed processes (one `kiln coordinator`, `kiln web`, two
# `kiln worker`s with their own stores) on PostgreSQL, RabbitMQ, Redis and S3 started by
# scripts/services in a scratch directory. Prints each time, its ratio to nix-build, and the
# per-step cost of each Kiln mode over nix-build (wall time × 2 slots / N).
#
# Usage: bench/p2_distributed.sh [N]   (default 500; needs Nix, busybox, curl, python3)
# The services use ports 4xxxx by default (KILN_SERVICES_*_PORT override them).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-p2d.XXXXXX")
chmod a+x "$work" # the services run PostgreSQL as the postgres user
. "$repo/bench/farm_lib.sh"
n=${1:-500}
svc=$work/services
pids=()
cleanup() {
    stop_kiln
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$repo/scripts/services" down "$svc" > /dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
export KILN_SERVICES_POSTGRES_PORT=${KILN_SERVICES_POSTGRES_PORT:-45532}
export KILN_SERVICES_AMQP_PORT=${KILN_SERVICES_AMQP_PORT:-45772}
export KILN_SERVICES_REDIS_PORT=${KILN_SERVICES_REDIS_PORT:-46479}
export KILN_SERVICES_S3_PORT=${KILN_SERVICES_S3_PORT:-49100}
export KILN_SERVICES_EPMD_PORT=${KILN_SERVICES_EPMD_PORT:-44469}
export KILN_SERVICES_RABBITMQ_DIST_PORT=${KILN_SERVICES_RABBITMQ_DIST_PORT:-45773}

echo "building kiln (release)..." >&2
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin kiln

for side in nix up dist; do mkdir -p "$work/$side"; trivial_expr "$side" "$n" > "$work/$side/release.nix"; done
git_repo "$work/up"
git_repo "$work/dist"

echo "starting PostgreSQL, RabbitMQ, Redis and S3..." >&2
"$repo/scripts/services" up "$svc" > /dev/null
# shellcheck source=/dev/null
. "$svc/env"

# start_distributed: migrate, web, one coordinator and two workers; sets $base.
start_distributed() {
    local d=$work/dist-data
    mkdir -p "$d"
    cat > "$d/kiln.toml" <<TOML
[worker]
nix_options = { sandbox = "true", "sandbox-paths" = "$sandbox_paths" }
TOML
    export KILN_LOG=${KILN_LOG:-warn}
    "$kiln" migrate --config "$d/kiln.toml" --data-dir "$d/migrate" > /dev/null
    "$kiln" web --config "$d/kiln.toml" --data-dir "$d/web" --listen 127.0.0.1:0 \
        > "$d/web.stdout" 2> "$d/web.log" &
    pids+=($!)
    for _ in $(seq 200); do grep -q '^kiln: web serving' "$d/web.stdout" && break; sleep 0.05; done
    base=$(sed -n 's/^kiln: web serving \(.*\)/\1/p' "$d/web.stdout")
    [ -n "$base" ] || { cat "$d/web.log" >&2; return 1; }
    export KILN_WEB_URL=$base
    "$kiln" coordinator --config "$d/kiln.toml" --data-dir "$d/c1" --name c1 \
        > "$d/c1.stdout" 2> "$d/c1.log" &
    pids+=($!)
    local token
    token=$("$kiln" token create --cache main --perm push --config "$d/kiln.toml" \
        --data-dir "$d/migrate" | tail -n 1)
    for w in 1 2; do
        KILN_WORKER_TOKEN=$token "$kiln" worker --config "$d/kiln.toml" --data-dir "$d/w$w" \
            --name "w$w" > "$d/w$w.stdout" 2> "$d/w$w.log" &
        pids+=($!)
    done
    for _ in $(seq 600); do
        [ "$(curl -fsS "$base/api/v1/status" | json 'len(d["workers"]) if d["coordinator_leader"] else 0')" = 2 ] && return 0
        sleep 0.1
    done
    echo "the distributed farm did not come up" >&2
    return 1
}

nix_s=$(nix_build 2 "$work/nix" "$work/nix-store")
start_kiln 2 "$work/up-data"
read -r up_total up_build < <(kiln_eval trivial "$work/up")
stop_kiln
start_distributed
read -r dist_total dist_build < <(kiln_eval trivial "$work/dist")

ratio() { python3 -c "print(f'{$1 / $nix_s:.2f}')"; }
per_step() { python3 -c "print(f'{($1 - $nix_s) * 2 / $n * 1000:.1f}')"; }
echo "derivations: $n, workers: 2 (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "nix-build -j2:                     ${nix_s} s"
echo "kiln up (total):                   ${up_total} s   ratio $(ratio "$up_total")   per step vs nix-build $(per_step "$up_total") ms"
echo "kiln up (build phase):             ${up_build} s"
echo "distributed (total):               ${dist_total} s   ratio $(ratio "$dist_total")   per step vs nix-build $(per_step "$dist_total") ms"
echo "distributed (build phase):         ${dist_build} s"
echo "distributed minus embedded, per step (queue, PostgreSQL, S3 round trips): $(python3 -c "print(f'{($dist_build - $up_build) * 2 / $n * 1000:.1f}')") ms"

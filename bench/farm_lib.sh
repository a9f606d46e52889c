# Shared by the farm benchmarks (bench/p1_scheduling.sh, bench/p2_overhead.sh): start `kiln up`,
# run one evaluation of a jobset through the API and time it, and time `nix-build` on the same
# expression in a fresh chroot store with the same sandbox settings. Source it; it needs curl and
# python3, and $repo (the repository root) and $work (a scratch directory) set.

kiln=${BENCH_KILN:-$repo/target/release/kiln}
sandbox_paths="/bin/sh=/bin/busybox /bin/busybox"
kiln_pid=""

now() { date +%s.%N; }

# json EXPR: evaluates the Python expression EXPR with `d` bound to the JSON on stdin.
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# start_kiln WORKERS DATA_DIR: starts kiln up with WORKERS workers (1 slot each) on a new port;
# sets $base.
start_kiln() {
    local workers=$1 data=$2
    mkdir -p "$data"
    cat > "$data.toml" <<TOML
[worker]
nix_options = { sandbox = "true", "sandbox-paths" = "$sandbox_paths" }
TOML
    KILN_LOG=${KILN_LOG:-warn} "$kiln" up --config "$data.toml" --data-dir "$data" \
        --listen 127.0.0.1:0 --workers "$workers" > "$data.stdout" 2> "$data.log" &
    kiln_pid=$!
    for _ in $(seq 200); do [ "$(wc -l < "$data.stdout")" -ge 3 ] && break; sleep 0.05; done
    base=$(sed -n 's/^kiln: serving \([^ ]*\).*/\1/p' "$data.stdout")
    [ -n "$base" ] || { cat "$data.log" >&2; return 1; }
}

stop_kiln() {
    if [ -n "$kiln_pid" ]; then
        kill "$kiln_pid" 2>/dev/null || true
        wait "$kiln_pid" 2>/dev/null || true
        kiln_pid=""
    fi
}

# git_repo DIR: commits everything in DIR (a new repository, or a new commit).
git_repo() {
    local dir=$1
    [ -d "$dir/.git" ] || git -C "$dir" -c init.defaultBranch=main init -q
    git -C "$dir" add -A
    git -C "$dir" -c user.name=bench -c user.email=bench@kiln.invalid commit -qm "bench $(date +%s%N)"
}

# kiln_eval JOBSET REPO: evaluates REPO's release.nix as jobset bench/JOBSET, waits until every
# build finished; prints "TOTAL BUILD" in seconds: from the request to the last build, and from the
# end of ingest (first dispatch possible) to the last build.
kiln_eval() {
    local jobset=$1 dir=$2
    curl -fsS -X PUT "$base/api/v1/projects/bench/jobsets/$jobset" -H 'Content-Type: application/json' \
        -d "{\"url\": \"$dir\", \"expression\": \"release.nix\", \"check_interval\": 0}" > /dev/null
    local start id eval status end
    start=$(now)
    id=$(curl -fsS -X POST "$base/api/v1/projects/bench/jobsets/$jobset/evals" | json 'd["id"]')
    while :; do
        eval=$(curl -fsS "$base/api/v1/evals/$id")
        status=$(json 'd["status"]' <<<"$eval")
        [ "$status" = failed ] && { echo "evaluation failed: $eval" >&2; return 1; }
        if [ "$status" = succeeded ] && \
           [ "$(json 'sum(1 for b in d["builds"] if b["status"] in ("queued","running"))' <<<"$eval")" = 0 ]; then
            break
        fi
        sleep 0.05
    done
    end=$(now)
    local bad
    bad=$(json 'sum(1 for b in d["builds"] if b["status"] != "succeeded")' <<<"$eval")
    [ "$bad" = 0 ] || { echo "$bad builds did not succeed" >&2; return 1; }
    # The evaluation finished (ingest done) at finished_at; build time is measured from there.
    local ingested
    ingested=$(curl -fsS "$base/api/v1/projects/bench/jobsets/$jobset/evals" | \
        json '__import__("datetime").datetime.fromisoformat(d[0]["finished_at"].replace("Z","+00:00")).timestamp()')
    python3 -c "print(f'{$end - $start:.2f} {$end - $ingested:.2f}')"
}

# nix_build WORKERS DIR STORE: times nix-build -j WORKERS of DIR/release.nix into the fresh chroot
# store STORE; prints seconds.
nix_build() {
    local workers=$1 dir=$2 store=$3 start end
    start=$(now)
    XDG_CACHE_HOME="$store-xdg" nix-build "$dir/release.nix" --store "$store" -j "$workers" --cores 1 \
        --option substituters '' --option sandbox true --option sandbox-paths "$sandbox_paths" \
        --no-out-link > /dev/null 2> "$store.log" || { tail -n 20 "$store.log" >&2; return 1; }
    end=$(now)
    python3 -c "print(f'{$end - $start:.2f}')"
}

# trivial_expr SALT N: a release.nix of N independent trivial derivations (each writes one line),
# whose output paths differ with SALT, so that each side of a comparison builds its own.
trivial_expr() {
    cat <<NIX
{ system ? builtins.currentSystem }:
builtins.listToAttrs (builtins.genList (i: {
  name = "t\${toString i}";
  value = derivation {
    name = "trivial-\${toString i}";
    inherit system;
    salt = "$1";
    builder = "/bin/sh";
    args = [ "-c" "echo \${toString i} > \$out" ];
  };
}) $2)
NIX
}

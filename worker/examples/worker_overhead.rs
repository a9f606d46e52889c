//! Runs the given derivations as steps on one executor and reports the wall time; driven by
//! `bench/worker_overhead.sh`, which compares it with `nix-build` of the same derivations.
//!
//! Usage: `worker_overhead --base URL --substituter URL --key KEY --token TOKEN
//! --coord-store DIR --store DIR [--slots N] DRV...` where the `.drv` files live in the chroot
//! store `--coord-store` and their inputs are already in the cache.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use kiln_nix::derivation::Derivation;
use kiln_nix::{StoreDir, StorePath};
use kiln_proto::{PROTO_VERSION, StepMessage, StepStatus};
use kiln_worker::{CancellationToken, DiscardLog, Executor, UploadSettings, WorkerConfig};

struct Args {
    base: String,
    substituter: String,
    key: String,
    token: String,
    coord: PathBuf,
    store: PathBuf,
    slots: usize,
    drvs: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut named = BTreeMap::new();
    let mut drvs = Vec::new();
    while let Some(arg) = it.next() {
        if let Some(name) = arg.strip_prefix("--") {
            let value = it.next().ok_or(format!("--{name} needs a value"))?;
            named.insert(name.to_owned(), value);
        } else {
            drvs.push(arg);
        }
    }
    let mut take = |name: &str| named.remove(name).ok_or(format!("--{name} is required"));
    Ok(Args {
        base: take("base")?,
        substituter: take("substituter")?,
        key: take("key")?,
        token: take("token")?,
        coord: take("coord-store")?.into(),
        store: take("store")?.into(),
        slots: named
            .remove("slots")
            .map_or(Ok(1), |s| s.parse().map_err(|e| format!("--slots: {e}")))?,
        drvs,
    })
}

fn read_drv(coord: &std::path::Path, drv_path: &str) -> Result<(String, Derivation), String> {
    let text = std::fs::read_to_string(coord.join(drv_path.trim_start_matches('/')))
        .map_err(|e| format!("{drv_path}: {e}"))?;
    let path = StorePath::parse(drv_path).map_err(|e| e.to_string())?;
    let drv = Derivation::parse_drv_file(&StoreDir::default(), &path, text.as_bytes())
        .map_err(|e| e.to_string())?;
    Ok((text, drv))
}

fn message(coord: &std::path::Path, step_id: i64, drv_path: &str) -> Result<StepMessage, String> {
    let (text, drv) = read_drv(coord, drv_path)?;
    let mut input_paths: Vec<String> = drv.input_srcs.iter().map(|p| p.to_absolute()).collect();
    for (input, wanted) in &drv.input_drvs {
        let (_, input_drv) = read_drv(coord, &input.to_absolute())?;
        for name in wanted {
            let out = input_drv.outputs.get(name).and_then(|o| o.path());
            input_paths.push(out.ok_or("input output without a path")?.to_absolute());
        }
    }
    Ok(StepMessage {
        version: PROTO_VERSION,
        step_id,
        attempt: 1,
        drv_path: drv_path.to_owned(),
        drv: text,
        input_paths,
        outputs: drv
            .outputs
            .iter()
            .filter_map(|(n, o)| o.path().map(|p| (n.clone(), p.to_absolute())))
            .collect(),
        system: drv.system_str().unwrap_or_default().to_owned(),
        required_features: vec![],
        timeout_secs: 3600,
        max_silent_secs: 3600,
        max_log_bytes: 64 << 20,
        max_output_bytes: 1 << 30,
    })
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let mut config = WorkerConfig::new(
        "bench",
        &args.store,
        &args.substituter,
        &args.key,
        UploadSettings {
            base_url: args.base.clone(),
            cache: "main".to_owned(),
            token: Some(args.token.clone()),
        },
    );
    config.slots = args.slots;
    let messages = args
        .drvs
        .iter()
        .enumerate()
        .map(|(i, d)| message(&args.coord, i as i64 + 1, d))
        .collect::<Result<Vec<_>, _>>()?;

    let started = Instant::now();
    let executor = Executor::start(config).await.map_err(|e| e.to_string())?;
    let start_ms = started.elapsed().as_millis();
    let steps = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for msg in messages {
        let executor = executor.clone();
        tasks.spawn(async move {
            let result = executor
                .run(&msg, &DiscardLog, CancellationToken::new())
                .await;
            (msg.drv_path, result)
        });
    }
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        let (drv, result) = joined.map_err(|e| e.to_string())?;
        if result.status != StepStatus::Succeeded {
            failed += 1;
            eprintln!("{drv}: {} {:?}", result.status, result.message);
        }
    }
    let secs = steps.elapsed().as_secs_f64();
    let n = args.drvs.len();
    println!(
        "steps={n} slots={} failed={failed} start_ms={start_ms} wall_s={secs:.3} per_step_ms={:.1} steps_per_s={:.2}",
        args.slots,
        secs * 1000.0 / n as f64,
        n as f64 / secs
    );
    if failed > 0 {
        return Err(format!("{failed} steps failed"));
    }
    Ok(())
}

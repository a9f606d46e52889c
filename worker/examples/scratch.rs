use kiln_nix::derivation::Derivation;
use kiln_nix::{StoreDir, StorePath};
use kiln_worker::serve::*;
use tokio_util::sync::CancellationToken;

struct Print;
impl StderrSink for Print {
    fn chunk(&mut self, d: &[u8]) {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 100000;
        println!("[{t}] STDERR {:?}", String::from_utf8_lossy(d));
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opts = ServeOptions {
        program: "nix-store".into(),
        store_root: "/tmp/wk/ws".into(),
        options: vec![
            ("sandbox".into(), "true".into()),
            (
                "sandbox-paths".into(),
                "/bin/sh=/bin/busybox /bin/busybox".into(),
            ),
            ("substituters".into(), "file:///tmp/wk/fcache".into()),
        ],
        env: vec![],
    };
    let mut p = ServeProcess::start(&opts).await.unwrap();
    let sd = StoreDir::default();
    let ca = std::fs::read_to_string("/tmp/wk/caddr").unwrap().trim().to_string();
    if std::env::var("SUB_FIRST").is_ok() {
        let r = p.query_valid_paths(&[ca.clone()], true, &mut Print, &CancellationToken::new()).await;
        println!("substitute before build: {r:?}");
    }
    for drv_path in &args[1..] {
        let (drv_path, limits) = drv_path.split_once(',').unwrap_or((drv_path, "0,0,0"));
        let l: Vec<u64> = limits.split(',').map(|s| s.parse().unwrap()).collect();
        let text = std::fs::read(format!("/tmp/wk/s{drv_path}")).unwrap();
        let path: StorePath = drv_path.parse().unwrap();
        let drv = Derivation::parse_drv_file(&sd, &path, &text).unwrap();
        let basic = BasicDerivation::new(path, drv, []);
        let t0 = std::time::Instant::now();
        let r = p
            .build_derivation(
                &sd,
                &basic,
                BuildLimits {
                    max_silent_secs: l[0],
                    timeout_secs: l[1],
                    max_log_bytes: l[2],
                },
                &mut Print,
                &CancellationToken::new(),
            )
            .await;
        println!("{drv_path}: {:?} in {:?}", r, t0.elapsed());
        let outs: Vec<String> = basic
            .drv
            .outputs
            .values()
            .filter_map(|o| o.path())
            .map(|p| p.to_absolute())
            .collect();
        let infos = p.query_path_infos(&outs, &mut Print).await;
        println!("infos {infos:?}");
    }
    let r = p.query_valid_paths(&[ca.clone()], true, &mut Print, &CancellationToken::new()).await;
    println!("substitute after build: {r:?}");
}

//! What a worker needs to know: its store, the cache it substitutes from and uploads to, what it
//! can build, and the Nix options its builds run with.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where results are uploaded: a cache on a Kiln server and a token allowed to push to it.
/// `Debug` does not show the token.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadSettings {
    /// The Kiln server's base URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The cache's name, e.g. `main`.
    pub cache: String,
    /// A token with `push` permission on the cache (also used to read a private cache), or
    /// `None` if the server needs none.
    pub token: Option<String>,
}

impl std::fmt::Debug for UploadSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSettings")
            .field("base_url", &self.base_url)
            .field("cache", &self.cache)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A worker's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The worker's name, reported with every result.
    pub name: String,
    /// The worker's own chroot store (`--store`): files live under `<store_root>/nix/store`,
    /// paths stay `/nix/store/...`. Created if missing. The worker also keeps Nix's narinfo
    /// disk cache and its netrc file under `<store_root>/kiln-worker/`.
    pub store_root: PathBuf,
    /// The substituter URL inputs come from (`<base>/cache/<name>`).
    pub cache_url: String,
    /// The cache's public key (`name:base64`), the only key trusted for substitution.
    pub cache_public_key: String,
    /// Where outputs and logs are uploaded.
    pub upload: UploadSettings,
    /// Platforms this worker builds for (default: the machine's, e.g. `x86_64-linux`).
    pub systems: Vec<String>,
    /// System features it supports (`kvm`, `big-parallel`, ...); Nix's `system-features` is set
    /// to exactly these. Default: none.
    pub features: Vec<String>,
    /// Extra `--option NAME VALUE` pairs for Nix, e.g. `sandbox = "true"` and `sandbox-paths`.
    /// The worker's own settings (substituters, trusted keys, system features, ...) take
    /// precedence over these.
    pub nix_options: BTreeMap<String, String>,
    /// How many steps build at once, each in its own `nix-store --serve` process (default 1).
    pub slots: usize,
    /// The `nix-store` program (default: `nix-store` from `PATH`).
    pub nix_store: PathBuf,
}

impl WorkerConfig {
    /// A configuration with the defaults above: the machine's system, no features, the
    /// sandbox on with only `/bin/sh` (busybox) exposed, one slot.
    pub fn new(
        name: impl Into<String>,
        store_root: impl Into<PathBuf>,
        cache_url: impl Into<String>,
        cache_public_key: impl Into<String>,
        upload: UploadSettings,
    ) -> WorkerConfig {
        WorkerConfig {
            name: name.into(),
            store_root: store_root.into(),
            cache_url: cache_url.into(),
            cache_public_key: cache_public_key.into(),
            upload,
            systems: vec![default_system()],
            features: Vec::new(),
            nix_options: BTreeMap::from([
                ("sandbox".to_owned(), "true".to_owned()),
                (
                    "sandbox-paths".to_owned(),
                    "/bin/sh=/bin/busybox /bin/busybox".to_owned(),
                ),
            ]),
            slots: 1,
            nix_store: PathBuf::from("nix-store"),
        }
    }
}

/// The Nix platform name of this machine (`x86_64-linux`, `aarch64-darwin`, ...).
pub fn default_system() -> String {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    format!("{}-{os}", std::env::consts::ARCH)
}

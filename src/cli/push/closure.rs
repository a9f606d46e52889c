//! What Nix knows about the paths to push: their closure, NAR hashes and sizes, references,
//! derivers and content addresses, and where their files are on disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use kiln_cache::client::UploadRequest;
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::narinfo::ContentAddress;
use kiln_nix::{StoreDir, StorePath};
use serde::Deserialize;

/// One path of the closure, as the local store registers it.
#[derive(Debug, Clone)]
pub struct LocalPath {
    /// The path.
    pub path: StorePath,
    /// Its registered NAR hash.
    pub nar_hash: Hash,
    /// Its registered NAR size in bytes.
    pub nar_size: u64,
    /// Its references (possibly itself).
    pub references: Vec<StorePath>,
    /// The derivation that built it, if registered.
    pub deriver: Option<StorePath>,
    /// Its content address, if it has one.
    pub ca: Option<ContentAddress>,
}

impl LocalPath {
    /// The upload announcing these facts; the cache checks the NAR against hash and size.
    pub fn upload_request(&self) -> UploadRequest {
        let mut request = UploadRequest::new(self.path.clone());
        request.references = self.references.clone();
        request.deriver = self.deriver.clone();
        request.ca = self.ca.clone();
        request.nar_hash = Some(self.nar_hash.clone());
        request.nar_size = Some(self.nar_size);
        request
    }
}

/// One element of `nix path-info --json` (Nix 2.8 field names).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathInfoJson {
    path: String,
    #[serde(default)]
    valid: Option<bool>,
    nar_hash: Option<String>,
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    deriver: Option<String>,
    #[serde(default)]
    ca: Option<String>,
}

fn store_path(field: &str, owner: &str, value: &str) -> anyhow::Result<StorePath> {
    StorePath::parse(value).with_context(|| format!("{field} of {owner} in nix path-info"))
}

impl PathInfoJson {
    fn into_local(self) -> anyhow::Result<LocalPath> {
        let owner = self.path.clone();
        if self.valid == Some(false) {
            bail!("{owner} is not valid in the store");
        }
        let path = store_path("path", &owner, &self.path)?;
        let nar_hash = self
            .nar_hash
            .with_context(|| format!("nix path-info gave no narHash for {owner}"))?;
        let nar_hash = Hash::parse_as(HashAlgo::Sha256, &nar_hash)
            .with_context(|| format!("narHash of {owner} in nix path-info"))?;
        let nar_size = self
            .nar_size
            .with_context(|| format!("nix path-info gave no narSize for {owner}"))?;
        let references = self
            .references
            .iter()
            .map(|r| store_path("a reference", &owner, r))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let deriver = self
            .deriver
            .filter(|d| !d.is_empty())
            .map(|d| store_path("deriver", &owner, &d))
            .transpose()?;
        let ca = self
            .ca
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<ContentAddress>()
                    .with_context(|| format!("ca of {owner} in nix path-info"))
            })
            .transpose()?;
        Ok(LocalPath {
            path,
            nar_hash,
            nar_size,
            references,
            deriver,
            ca,
        })
    }
}

/// The Nix store paths are read from: `--store` as given to Nix, and the directory its
/// `/nix/store` really is.
#[derive(Debug, Clone)]
pub struct LocalStore {
    /// The `--store` argument for Nix, if any.
    store: Option<String>,
    /// The chroot the store's files are under (`/` for the system store).
    root: PathBuf,
}

impl LocalStore {
    /// The store named by `--store` (a directory is a chroot store, `local?root=DIR` too; any
    /// other store URL is handed to Nix and its files are read from `/nix/store`).
    pub fn new(store: Option<String>) -> LocalStore {
        let root = store
            .as_deref()
            .and_then(chroot_of)
            .unwrap_or_else(|| PathBuf::from("/"));
        LocalStore { store, root }
    }

    /// Where the files of `path` are.
    pub fn location(&self, path: &StorePath) -> PathBuf {
        self.root
            .join(StoreDir::default().display(path).trim_start_matches('/'))
    }

    /// The closures of `paths` (store paths, or symlinks to them such as `./result`), with what
    /// the store has registered about each path, in no particular order.
    pub fn closure(&self, paths: &[String]) -> anyhow::Result<Vec<LocalPath>> {
        let mut cmd = Command::new("nix");
        cmd.args([
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
            "--recursive",
        ]);
        if let Some(store) = &self.store {
            cmd.arg("--store").arg(store);
        }
        cmd.arg("--").args(paths);
        let out = cmd
            .output()
            .context("cannot run `nix path-info` (is Nix installed and on PATH?)")?;
        if !out.status.success() {
            bail!(
                "`nix path-info --recursive` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let infos: Vec<PathInfoJson> = serde_json::from_slice(&out.stdout)
            .context("cannot read the JSON of `nix path-info --json`")?;
        infos.into_iter().map(PathInfoJson::into_local).collect()
    }
}

/// The chroot directory of a local store given as a directory or as `local?root=DIR`.
fn chroot_of(store: &str) -> Option<PathBuf> {
    if store.starts_with('/') || store.starts_with('.') {
        return Some(Path::new(store).to_owned());
    }
    let query = store
        .strip_prefix("local?")
        .or_else(|| store.strip_prefix("local://?"))?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("root="))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chroot_stores_are_read_from_their_directory() {
        let path = StorePath::parse("/nix/store/0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx-hello").unwrap();
        let chroot = LocalStore::new(Some("/tmp/st".to_owned()));
        assert_eq!(
            chroot.location(&path),
            Path::new("/tmp/st/nix/store/0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx-hello")
        );
        let url = LocalStore::new(Some("local?root=/srv/n&state=/x".to_owned()));
        assert_eq!(
            url.location(&path),
            Path::new("/srv/n/nix/store/0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx-hello")
        );
        for system in [None, Some("daemon".to_owned())] {
            assert_eq!(
                LocalStore::new(system).location(&path),
                Path::new("/nix/store/0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx-hello")
            );
        }
    }

    #[test]
    fn path_info_json_of_nix_2_8_is_read() {
        let json = r#"[{"path":"/nix/store/a9rhmcx2y9gcr3dv40fj7s33dbxzmnvq-pi-1","narHash":"sha256-ieabXONr2knA9xWU3dXrcF6qMcAhv1DfDSED81CmEl8=","narSize":168,"references":["/nix/store/g7ra2hk4im66xrl48m0sdc503inzwlxc-pi-0"],"deriver":"/nix/store/snccffnncgg7zyydygypnrx39jip3fzk-pi-1.drv","registrationTime":1795835010,"ultimate":true},
            {"path":"/nix/store/a197r83w5ay4ixg4riwn1a49dh490ly2-f","narHash":"sha256-7LbDw7WtaXyYkUf3lK4/XPnSf24DWHcygBgPAIKKa0I=","narSize":120,"references":[],"ca":"fixed:r:sha256:0hkbia1003qqh0r7fn03drzx5yaw7yp99xs7j6c7qsddnp1w7dpc","registrationTime":1795835011}]"#;
        let infos: Vec<PathInfoJson> = serde_json::from_str(json).unwrap();
        let locals: Vec<LocalPath> = infos.into_iter().map(|i| i.into_local().unwrap()).collect();
        assert_eq!(locals[0].nar_size, 168);
        assert_eq!(
            locals[0].nar_hash.to_base64(),
            "ieabXONr2knA9xWU3dXrcF6qMcAhv1DfDSED81CmEl8="
        );
        assert_eq!(locals[0].references.len(), 1);
        assert_eq!(
            locals[0].deriver.as_ref().unwrap().to_string(),
            "snccffnncgg7zyydygypnrx39jip3fzk-pi-1.drv"
        );
        assert!(locals[1].ca.is_some());
        assert!(locals[1].deriver.is_none());

        let invalid: PathInfoJson = serde_json::from_str(
            r#"{"path":"/nix/store/a9rhmcx2y9gcr3dv40fj7s33dbxzmnvq-pi-1","valid":false}"#,
        )
        .unwrap();
        assert!(invalid.into_local().is_err());
    }
}

//! The `BasicDerivation` sent with `cmdBuildDerivation`: a derivation without its input
//! derivations, whose needed outputs are listed among the input sources instead.
//!
//! This is how Hydra builds on remote machines: the builder's store never sees the `.drv`
//! closure, only the input closure, so it cannot (and need not) resolve input derivations. The
//! outputs are written exactly as in the `.drv` file (name, path, hash algorithm, hash), which
//! is also the encoding Nix's `writeDerivation` uses on the wire.

use std::collections::BTreeSet;

use kiln_nix::derivation::{Derivation, DerivationOutput};
use kiln_nix::{StoreDir, StorePath};

use super::wire::Request;

/// A derivation ready to be built by a store that has its input closure but not its `.drv`.
#[derive(Debug, Clone)]
pub struct BasicDerivation {
    /// The `.drv` path; Nix uses it to name the build and as the outputs' deriver.
    pub drv_path: StorePath,
    /// The parsed derivation; its `input_drvs` are not sent.
    pub drv: Derivation,
    /// The input sources sent instead of `drv.input_srcs`: those plus the outputs of the input
    /// derivations that the build uses.
    pub input_srcs: BTreeSet<StorePath>,
}

impl BasicDerivation {
    /// A basic derivation for `drv`, with `inputs` (the needed outputs of its input derivations,
    /// and possibly its sources again) added to its input sources.
    pub fn new(
        drv_path: StorePath,
        drv: Derivation,
        inputs: impl IntoIterator<Item = StorePath>,
    ) -> BasicDerivation {
        let mut input_srcs = drv.input_srcs.clone();
        input_srcs.extend(inputs);
        BasicDerivation {
            drv_path,
            drv,
            input_srcs,
        }
    }

    /// Appends the derivation in the encoding `nix-store --serve` reads after the `.drv` path:
    /// outputs (name, path, hash algorithm, hash), input sources, platform, builder, arguments
    /// and environment.
    pub fn encode(&self, store_dir: &StoreDir, req: &mut Request) {
        req.int(self.drv.outputs.len() as u64);
        for (name, output) in &self.drv.outputs {
            req.str(name);
            match output {
                DerivationOutput::InputAddressed(path) => {
                    req.str(&store_dir.display(path)).str("").str("");
                }
                DerivationOutput::Fixed { path, hash } => {
                    req.str(&store_dir.display(path))
                        .str(&hash.method_algo())
                        .str(&hash.hash.to_base16());
                }
                DerivationOutput::Floating { .. } => {
                    req.str("").str(&output.hash_algo_field()).str("");
                }
                DerivationOutput::Deferred => {
                    req.str("").str("").str("");
                }
            }
        }
        req.strings(
            self.input_srcs
                .iter()
                .map(|p| store_dir.display(p))
                .collect::<Vec<_>>(),
        );
        req.bytes(&self.drv.system).bytes(&self.drv.builder);
        req.strings(&self.drv.args);
        req.int(self.drv.env.len() as u64);
        for (key, value) in &self.drv.env {
            req.bytes(key).bytes(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::wire::{read_bytes, read_int, read_string, read_strings};

    const DRV: &str = r#"Derive([("out","/nix/store/0kh5zbb6nrwcm9ipy9nbs7nbjyjm4ais-b","","")],[("/nix/store/9rkarsh9kvp5pbmk8zj5cra4snhyc4iq-a.drv",["out"])],["/nix/store/a4i2zw2mx06nfp8xq4jkf8ib3y5pr7rb-src"],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("builder","/bin/sh"),("name","b"),("out","/nix/store/0kh5zbb6nrwcm9ipy9nbs7nbjyjm4ais-b"),("system","x86_64-linux")])"#;

    #[tokio::test]
    async fn input_derivations_become_input_sources() {
        let store_dir = StoreDir::default();
        let drv = Derivation::parse(&store_dir, "b", DRV.as_bytes()).unwrap();
        let drv_path: StorePath = "/nix/store/1g48ijxx8m4bwfcy8wr0yhzsfyq39r1d-b.drv"
            .parse()
            .unwrap();
        let dep: StorePath = "/nix/store/2bcv91i8fahqghn8dmyr791iaycbsjdd-a"
            .parse()
            .unwrap();
        let basic = BasicDerivation::new(drv_path, drv, [dep]);
        let mut req = Request::new();
        basic.encode(&store_dir, &mut req);
        let bytes = req.into_bytes();
        let r = &mut bytes.as_slice();

        assert_eq!(read_int(r).await.unwrap(), 1);
        assert_eq!(read_string(r, "").await.unwrap(), "out");
        assert_eq!(
            read_string(r, "").await.unwrap(),
            "/nix/store/0kh5zbb6nrwcm9ipy9nbs7nbjyjm4ais-b"
        );
        assert_eq!(read_string(r, "").await.unwrap(), "");
        assert_eq!(read_string(r, "").await.unwrap(), "");
        let mut srcs = read_strings(r, "").await.unwrap();
        srcs.sort();
        assert_eq!(
            srcs,
            [
                "/nix/store/2bcv91i8fahqghn8dmyr791iaycbsjdd-a",
                "/nix/store/a4i2zw2mx06nfp8xq4jkf8ib3y5pr7rb-src"
            ]
        );
        assert_eq!(read_bytes(r).await.unwrap(), b"x86_64-linux");
        assert_eq!(read_bytes(r).await.unwrap(), b"/bin/sh");
        assert_eq!(read_strings(r, "").await.unwrap(), ["-c", "echo hi > $out"]);
        assert_eq!(read_int(r).await.unwrap(), 4);
        assert_eq!(read_bytes(r).await.unwrap(), b"builder");
        assert_eq!(read_bytes(r).await.unwrap(), b"/bin/sh");
        for _ in 0..3 {
            read_bytes(r).await.unwrap();
            read_bytes(r).await.unwrap();
        }
        assert!(r.is_empty());
    }
}

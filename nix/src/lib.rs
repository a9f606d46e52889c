//! Nix's on-disk and on-wire formats, as Kiln reads and writes them.
//!
//! This crate owns everything that must be byte-exact with Nix: the nixbase32 alphabet and hash
//! encodings, store paths and the hashes that name them, derivations in ATerm and JSON form, NAR
//! archives, narinfo files, the `nix-cache-info` file and Ed25519 signing keys in Nix's
//! `name:base64` format. It does no I/O beyond the readers and writers handed to it (and, for NAR
//! packing and unpacking, the file tree named by the caller), never talks to a Nix daemon, and never
//! trusts its input: every parser returns a typed error naming what is wrong.
//!
//! Primitives come from well-kept crates (`sha2`, `ed25519-dalek`, `base64`, `hex`). The formats
//! themselves are written here because no maintained crate covers them with the guarantees Kiln
//! needs: nixbase32 is not RFC 4648 base32, ATerm as Nix writes it is a tiny dialect with Nix's own
//! escaping, and the NAR reader must be streaming and must refuse hostile archives before anything
//! reaches the disk.

pub mod base32;
pub mod cache_info;
pub mod derivation;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod signing;
pub mod store_path;

pub use hash::{Hash, HashAlgo};
pub use store_path::{StoreDir, StorePath};

//! The answer to `cmdBuildDerivation`: Nix's `BuildResult` as `nix-store --serve` 2.8 writes it.
//!
//! Layout: status, error message, then (client minor version >= 3) times built, whether the
//! build was found non-deterministic, start and stop time (Unix seconds), then the built outputs
//! as a map of strings (`DrvOutput` -> `Realisation` JSON). Nix 2.8 writes that last map for
//! every client: its version test is `GET_PROTOCOL_MINOR(clientVersion >= 6)`, which is 1
//! whenever the client announced any 2.x version, so a reader must always expect it.

use tokio::io::AsyncRead;

use super::wire::{WireError, read_count, read_int, read_string};

/// Nix's `BuildResult::Status` (its numeric values are part of the protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NixBuildStatus {
    /// 0: the outputs were built.
    Built,
    /// 1: the outputs were substituted.
    Substituted,
    /// 2: the outputs were already valid.
    AlreadyValid,
    /// 3: the builder failed (or its outputs did not match), and would fail again.
    PermanentFailure,
    /// 4: an input was refused.
    InputRejected,
    /// 5: an output was refused (e.g. a fixed-output hash mismatch).
    OutputRejected,
    /// 6: possibly transient trouble.
    TransientFailure,
    /// 7: a cached failure (no longer produced by Nix).
    CachedFailure,
    /// 8: `timeout` or `max-silent-time` was exceeded.
    TimedOut,
    /// 9: any other error, e.g. a missing input or an unsupported platform.
    MiscFailure,
    /// 10: a dependency failed.
    DependencyFailed,
    /// 11: the log exceeded `max-log-size`.
    LogLimitExceeded,
    /// 12: repeated builds differed.
    NotDeterministic,
    /// 13: a content-addressed derivation resolved to outputs that were already valid.
    ResolvesToAlreadyValid,
    /// 14: no substituter could provide a path.
    NoSubstituters,
}

impl NixBuildStatus {
    /// The status for Nix's number, if it is one Nix 2.8 knows.
    pub fn from_code(code: u64) -> Option<NixBuildStatus> {
        use NixBuildStatus::*;
        Some(match code {
            0 => Built,
            1 => Substituted,
            2 => AlreadyValid,
            3 => PermanentFailure,
            4 => InputRejected,
            5 => OutputRejected,
            6 => TransientFailure,
            7 => CachedFailure,
            8 => TimedOut,
            9 => MiscFailure,
            10 => DependencyFailed,
            11 => LogLimitExceeded,
            12 => NotDeterministic,
            13 => ResolvesToAlreadyValid,
            14 => NoSubstituters,
            _ => return None,
        })
    }

    /// Whether the outputs exist after the build (Nix's `BuildResult::success()`).
    pub fn is_success(self) -> bool {
        matches!(
            self,
            NixBuildStatus::Built
                | NixBuildStatus::Substituted
                | NixBuildStatus::AlreadyValid
                | NixBuildStatus::ResolvesToAlreadyValid
        )
    }
}

/// What `cmdBuildDerivation` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// How the build ended.
    pub status: NixBuildStatus,
    /// Nix's error message (empty on success), possibly with terminal colour codes.
    pub error_msg: String,
    /// How many times the derivation was built (0 if it was not).
    pub times_built: u64,
    /// Whether repeated builds differed.
    pub non_deterministic: bool,
    /// When the build started, Unix seconds (0 if it did not).
    pub start_time: u64,
    /// When the build stopped, Unix seconds (0 if it did not).
    pub stop_time: u64,
    /// Realisations of content-addressed outputs (`DrvOutput` id, `Realisation` JSON); empty
    /// for input-addressed derivations.
    pub built_outputs: Vec<(String, String)>,
}

impl BuildResult {
    /// Reads the answer of a server that was greeted with a client minor version >= 3.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<BuildResult, WireError> {
        let code = read_int(r).await?;
        let status = NixBuildStatus::from_code(code)
            .ok_or_else(|| WireError::Protocol(format!("unknown build status {code}")))?;
        let error_msg = read_string(r, "error message")
            .await
            .or_else(|err| match err {
                WireError::NotUtf8 { .. } => Ok(String::from("(error message is not UTF-8)")),
                other => Err(other),
            })?;
        let times_built = read_int(r).await?;
        let non_deterministic = read_int(r).await? != 0;
        let start_time = read_int(r).await?;
        let stop_time = read_int(r).await?;
        let n = read_count(r).await?;
        let mut built_outputs = Vec::new();
        for _ in 0..n {
            let id = read_string(r, "output id").await?;
            let realisation = read_string(r, "realisation").await?;
            built_outputs.push((id, realisation));
        }
        Ok(BuildResult {
            status,
            error_msg,
            times_built,
            non_deterministic,
            start_time,
            stop_time,
            built_outputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::wire::Request;

    #[tokio::test]
    async fn reads_the_built_outputs_map_nix_2_8_always_sends() {
        let mut req = Request::new();
        req.int(8)
            .str("timed out after 1 seconds")
            .int(1)
            .int(0)
            .int(100)
            .int(101)
            .int(1)
            .str("sha256:abc!out")
            .str("{}");
        let bytes = req.into_bytes();
        let r = &mut bytes.as_slice();
        let res = BuildResult::read(r).await.unwrap();
        assert_eq!(res.status, NixBuildStatus::TimedOut);
        assert_eq!(res.error_msg, "timed out after 1 seconds");
        assert_eq!((res.start_time, res.stop_time), (100, 101));
        assert_eq!(res.built_outputs, [("sha256:abc!out".into(), "{}".into())]);
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn an_unknown_status_is_a_protocol_error() {
        let mut req = Request::new();
        req.int(99).str("");
        let bytes = req.into_bytes();
        let err = BuildResult::read(&mut bytes.as_slice()).await.unwrap_err();
        assert!(matches!(err, WireError::Protocol(_)), "{err}");
    }

    #[test]
    fn only_nix_success_statuses_count_as_success() {
        let ok: Vec<u64> = (0..15)
            .filter(|&c| NixBuildStatus::from_code(c).unwrap().is_success())
            .collect();
        assert_eq!(ok, [0, 1, 2, 13]);
        assert_eq!(NixBuildStatus::from_code(15), None);
    }
}

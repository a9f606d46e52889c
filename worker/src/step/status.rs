//! Nix's verdict on a build as a step status, and Nix's messages as plain text.

use kiln_proto::StepStatus;

use crate::serve::NixBuildStatus;

/// The step status for a build Nix did not complete.
///
/// `TransientFailure` (Nix's verdict for a failed fixed-output derivation, which may have met a
/// flaky network, or for a full disk) and `NoSubstituters` are retried, as Hydra retries them;
/// every other failure is the derivation's own and final.
pub fn step_status(status: NixBuildStatus) -> StepStatus {
    use NixBuildStatus::*;
    match status {
        Built | Substituted | AlreadyValid | ResolvesToAlreadyValid => StepStatus::Succeeded,
        TimedOut => StepStatus::TimedOut,
        LogLimitExceeded => StepStatus::LogLimitExceeded,
        TransientFailure | NoSubstituters => StepStatus::Transient,
        PermanentFailure | InputRejected | OutputRejected | CachedFailure | MiscFailure
        | DependencyFailed | NotDeterministic => StepStatus::Failed,
    }
}

/// Longest message kept from Nix, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4000;

/// Nix's message without terminal escape sequences (Nix colours store paths and numbers even
/// when nobody reads a terminal), trimmed, and cut to [`MAX_MESSAGE_CHARS`].
pub fn nix_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    let out = out.trim();
    match out.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &out[..cut]),
        None => out.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_removed_from_nix_messages() {
        let raw = "\u{1b}[0mbuilder for '\u{1b}[35;1m/nix/store/x-fail.drv\u{1b}[0m' failed with exit code 3\n";
        assert_eq!(
            nix_message(raw),
            "builder for '/nix/store/x-fail.drv' failed with exit code 3"
        );
        assert_eq!(nix_message("plain"), "plain");
        assert_eq!(nix_message("cut \u{1b}[35"), "cut");
        let long = "é".repeat(MAX_MESSAGE_CHARS + 10);
        assert_eq!(nix_message(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn nix_verdicts_map_to_step_statuses() {
        use NixBuildStatus::*;
        let cases = [
            (Built, StepStatus::Succeeded),
            (PermanentFailure, StepStatus::Failed),
            (MiscFailure, StepStatus::Failed),
            (OutputRejected, StepStatus::Failed),
            (TimedOut, StepStatus::TimedOut),
            (LogLimitExceeded, StepStatus::LogLimitExceeded),
            (TransientFailure, StepStatus::Transient),
            (NotDeterministic, StepStatus::Failed),
        ];
        for (nix, step) in cases {
            assert_eq!(step_status(nix), step, "{nix:?}");
        }
    }
}

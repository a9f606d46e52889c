//! Typed row ids, so that a cache id cannot be passed where a path id is expected.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl $name {
            /// The raw database value.
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A row of `caches`.
    CacheId
);
id_type!(
    /// A row of `paths`: one store path in one cache.
    PathId
);
id_type!(
    /// A row of `nars`: one stored NAR file in one cache.
    NarId
);
id_type!(
    /// A row of `tokens`.
    TokenId
);
id_type!(
    /// A row of `projects`.
    ProjectId
);
id_type!(
    /// A row of `jobsets`.
    JobsetId
);
id_type!(
    /// A row of `evaluations`.
    EvaluationId
);
id_type!(
    /// A row of `builds`: one job of one evaluation.
    BuildId
);
id_type!(
    /// A row of `steps`: one derivation to build, shared by every build that needs it.
    StepId
);

//! `[cache.gc]`: when the binary cache deletes paths, and lengths of time written with a unit.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A length of time, written as integer seconds or as `"<number><unit>"` with the units `s`,
/// `m`, `h`, `d` (24 hours) or `w` (7 days); a space before the unit is allowed (`"90 d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeSpan(pub Duration);

impl TimeSpan {
    /// The length as a [`Duration`].
    pub fn duration(self) -> Duration {
        self.0
    }

    /// Parses `"<number><unit>"` or a plain number of seconds.
    pub fn parse(s: &str) -> Result<TimeSpan, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("length of time {s:?} does not start with a number"))?;
        let factor: u64 = match unit.trim() {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            other => {
                return Err(format!(
                    "length of time {s:?} has the unknown unit {other:?} (use s, m, h, d or w)"
                ));
            }
        };
        number
            .checked_mul(factor)
            .map(|secs| TimeSpan(Duration::from_secs(secs)))
            .ok_or_else(|| format!("length of time {s:?} is too large"))
    }
}

/// The largest unit that divides the length exactly: `90d`, `36h`, `0s`.
impl fmt::Display for TimeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        for (unit, size) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
            if secs != 0 && secs % size == 0 {
                return write!(f, "{}{unit}", secs / size);
            }
        }
        write!(f, "{secs}s")
    }
}

impl Serialize for TimeSpan {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeSpan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpanVisitor;

        impl Visitor<'_> for SpanVisitor {
            type Value = TimeSpan;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds or a string such as \"30d\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TimeSpan, E> {
                Ok(TimeSpan(Duration::from_secs(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TimeSpan, E> {
                u64::try_from(v)
                    .map(|v| TimeSpan(Duration::from_secs(v)))
                    .map_err(|_| E::custom(format!("length of time {v} is negative")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<TimeSpan, E> {
                TimeSpan::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SpanVisitor)
    }
}

/// How long a cache keeps paths. A path expires when it is older than `max_age` or has not been
/// read for `max_idle`; an unset limit never expires anything. Expired paths are deleted only if
/// no kept path refers to them and no pin holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Delete paths uploaded longer ago than this, however often they are read. Default: none.
    #[serde(default)]
    pub max_age: Option<TimeSpan>,
    /// Delete paths that nobody has substituted (fetched the narinfo of) for this long; a path
    /// counts as read when it is uploaded. Default: none.
    #[serde(default)]
    pub max_idle: Option<TimeSpan>,
}

impl Retention {
    /// Whether this retention keeps everything.
    pub fn keeps_everything(&self) -> bool {
        self.max_age.is_none() && self.max_idle.is_none()
    }
}

/// `[cache.gc]`: garbage collection of the binary cache.
///
/// The defaults delete no path: without `max_age` or `max_idle`, collection only reaps what no
/// path uses (NAR files whose upload was abandoned, leftovers of interrupted uploads) once it is
/// older than `grace`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// How often `kiln up` collects every cache. Default: never (run `kiln cache gc`).
    #[serde(default)]
    pub interval: Option<TimeSpan>,
    /// `max_age` of caches not listed under `caches` (see [`Retention`]). Default: none.
    #[serde(default)]
    pub max_age: Option<TimeSpan>,
    /// `max_idle` of caches not listed under `caches` (see [`Retention`]). Default: none.
    #[serde(default)]
    pub max_idle: Option<TimeSpan>,
    /// NAR files no path uses, staging objects and temporary files are deleted only once they
    /// are older than this, so that uploads under way (NAR stored, narinfo not yet sent) are
    /// never disturbed. Default 1 day.
    #[serde(default = "default_grace")]
    pub grace: TimeSpan,
    /// Retention per cache name, replacing the global one entirely (`[cache.gc.caches.main]`
    /// with `max_age = "90d"`); an empty table keeps that cache's paths forever.
    #[serde(default)]
    pub caches: BTreeMap<String, Retention>,
}

fn default_grace() -> TimeSpan {
    TimeSpan(Duration::from_secs(86_400))
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: None,
            max_age: None,
            max_idle: None,
            grace: default_grace(),
            caches: BTreeMap::new(),
        }
    }
}

impl GcConfig {
    /// The retention of the cache `name`.
    pub fn retention_of(&self, name: &str) -> Retention {
        match self.caches.get(name) {
            Some(retention) => retention.clone(),
            None => Retention {
                max_age: self.max_age,
                max_idle: self.max_idle,
            },
        }
    }

    /// Checks the values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(interval) = self.interval
            && interval.0.is_zero()
        {
            return Err(
                "cache.gc.interval must be longer than 0s (leave it out to never collect)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_spans_take_units_and_print_the_largest_exact_one() {
        assert_eq!(TimeSpan::parse("90d").unwrap().0.as_secs(), 90 * 86_400);
        assert_eq!(TimeSpan::parse("36 h").unwrap().0.as_secs(), 36 * 3600);
        assert_eq!(TimeSpan::parse("0").unwrap().0.as_secs(), 0);
        assert_eq!(TimeSpan::parse("2w").unwrap().to_string(), "2w");
        assert_eq!(TimeSpan::parse("36h").unwrap().to_string(), "36h");
        assert_eq!(TimeSpan::parse("61s").unwrap().to_string(), "61s");
        assert_eq!(TimeSpan::parse("0m").unwrap().to_string(), "0s");
        assert!(
            TimeSpan::parse("3 fortnights")
                .unwrap_err()
                .contains("fortnights")
        );
        assert!(TimeSpan::parse("d").is_err());
        assert!(
            TimeSpan::parse("99999999999999999w")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn per_cache_retention_replaces_the_global_one() {
        let gc: GcConfig = toml::from_str(
            r#"
            max_idle = "30d"
            [caches.releases]
            [caches.ci]
            max_age = "1w"
            "#,
        )
        .unwrap();
        assert_eq!(gc.grace.0.as_secs(), 86_400);
        assert_eq!(gc.interval, None);
        assert_eq!(
            gc.retention_of("main").max_idle,
            Some(TimeSpan(Duration::from_secs(30 * 86_400)))
        );
        assert!(gc.retention_of("releases").keeps_everything());
        assert_eq!(gc.retention_of("ci").max_idle, None);
        assert_eq!(
            gc.retention_of("ci").max_age,
            Some(TimeSpan(Duration::from_secs(7 * 86_400)))
        );
    }

    #[test]
    fn defaults_delete_no_path() {
        let gc = GcConfig::default();
        assert!(gc.retention_of("main").keeps_everything());
        assert_eq!(gc.interval, None);
    }
}

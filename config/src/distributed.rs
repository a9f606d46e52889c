//! The distributed mode's settings: where the shared services are (`amqp_url`, `redis_url`,
//! `cache_storage`, `web_url`, `worker_token`, usually given as `KILN_*` variables) and the
//! `[distributed]` table of timings.

use serde::{Deserialize, Serialize};

use crate::StorageConfig;

/// `[distributed]`: timings of heartbeats, leases and redeliveries.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedConfig {
    /// Seconds between a worker's heartbeats in Redis. Default 5.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: u64,
    /// Seconds after its last heartbeat before a worker is forgotten (its slots no longer
    /// count). Default 30.
    #[serde(default = "default_worker_ttl")]
    pub worker_ttl: u64,
    /// Seconds a coordinator's leader lease lasts without renewal; a standby takes over at
    /// most this long (plus one try interval, a third of it) after the leader dies. Default 10.
    #[serde(default = "default_lease")]
    pub leader_lease: u64,
    /// Times one step message may return to its queue because the worker building it was
    /// lost; the next return dead-letters it and the step ends `aborted` (so it is delivered
    /// at most `delivery_limit + 1` times). Fixed when a step queue is first created in
    /// RabbitMQ. Default 3.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        DistributedConfig {
            heartbeat_interval: default_heartbeat(),
            worker_ttl: default_worker_ttl(),
            leader_lease: default_lease(),
            delivery_limit: default_delivery_limit(),
        }
    }
}

fn default_heartbeat() -> u64 {
    5
}

fn default_worker_ttl() -> u64 {
    30
}

fn default_lease() -> u64 {
    10
}

fn default_delivery_limit() -> u32 {
    3
}

impl DistributedConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval == 0 {
            return Err("distributed.heartbeat_interval must be at least 1 second".to_owned());
        }
        if self.worker_ttl <= self.heartbeat_interval {
            return Err(format!(
                "distributed.worker_ttl ({}) must be longer than distributed.heartbeat_interval ({})",
                self.worker_ttl, self.heartbeat_interval
            ));
        }
        if self.leader_lease < 2 {
            return Err("distributed.leader_lease must be at least 2 seconds".to_owned());
        }
        if self.delivery_limit == 0 {
            return Err("distributed.delivery_limit must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Reads `cache_storage` (`KILN_CACHE_STORAGE`): a local directory (an absolute path, or
/// `file:///path`), or `s3://BUCKET[/PREFIX]?endpoint=URL&region=R`; an `http://` endpoint
/// allows plain HTTP. Credentials come from the usual `AWS_*` variables.
pub fn parse_cache_storage(value: &str) -> Result<StorageConfig, String> {
    let bad = |why: &str| format!("cache_storage {value:?}: {why}");
    if let Some(rest) = value.strip_prefix("s3://") {
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = match location.split_once('/') {
            Some((bucket, prefix)) => (bucket, Some(prefix.trim_matches('/').to_owned())),
            None => (location, None),
        };
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing (s3://BUCKET?endpoint=URL)"));
        }
        let mut endpoint = None;
        let mut region = "us-east-1".to_owned();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, val) = pair
                .split_once('=')
                .ok_or_else(|| bad(&format!("parameter {pair:?} has no value")))?;
            match key {
                "endpoint" => endpoint = Some(val.to_owned()),
                "region" => region = val.to_owned(),
                other => {
                    return Err(bad(&format!(
                        "unknown parameter {other:?} (known: endpoint, region)"
                    )));
                }
            }
        }
        if let Some(url) = &endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(bad("endpoint must start with http:// or https://"));
        }
        let allow_http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        return Ok(StorageConfig::S3 {
            bucket: bucket.to_owned(),
            region,
            endpoint,
            prefix: prefix.filter(|p| !p.is_empty()),
            access_key_id: None,
            secret_access_key_file: None,
            allow_http,
        });
    }
    let path = value.strip_prefix("file://").unwrap_or(value);
    if !path.starts_with('/') {
        return Err(bad(
            "expected an absolute directory path or s3://BUCKET?endpoint=URL",
        ));
    }
    Ok(StorageConfig::Local {
        path: Some(path.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_parse() {
        assert_eq!(
            parse_cache_storage("/srv/cache").unwrap(),
            StorageConfig::Local {
                path: Some("/srv/cache".into())
            }
        );
        assert_eq!(
            parse_cache_storage("file:///srv/cache").unwrap(),
            StorageConfig::Local {
                path: Some("/srv/cache".into())
            }
        );
        match parse_cache_storage("s3://kiln/nars?endpoint=http://127.0.0.1:9000&region=eu")
            .unwrap()
        {
            StorageConfig::S3 {
                bucket,
                region,
                endpoint,
                prefix,
                allow_http,
                ..
            } => {
                assert_eq!(bucket, "kiln");
                assert_eq!(region, "eu");
                assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:9000"));
                assert_eq!(prefix.as_deref(), Some("nars"));
                assert!(allow_http);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_storage_urls_say_what_is_wrong() {
        for (value, needle) in [
            ("relative/dir", "absolute"),
            ("s3://?endpoint=http://x", "bucket"),
            ("s3://b?endpint=http://x", "endpint"),
            ("s3://b?endpoint=ftp://x", "http"),
            ("s3://b?endpoint", "no value"),
        ] {
            let err = parse_cache_storage(value).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }
}

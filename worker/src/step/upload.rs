//! Sending a step's results to the cache: each output's NAR, packed from the worker's store
//! while it is sent, after the outputs it refers to; and the build log.

use std::collections::BTreeMap;

use kiln_cache::client::{Body, UploadRequest};
use kiln_nix::narinfo::ContentAddress;
use kiln_nix::{Hash, HashAlgo, StorePath};
use kiln_proto::OutputInfo;

use super::plan::Plan;
use crate::executor::Shared;
use crate::outputs::support::BuiltOutput;
use crate::outputs::upload_order;
use crate::serve::PathInfo;

/// Uploads the outputs in reference order; returns what the cache recorded for each, or the
/// cause of the first failure.
pub(crate) async fn outputs(
    shared: &Shared,
    built: &[BuiltOutput],
    infos: &[PathInfo],
) -> Result<BTreeMap<String, OutputInfo>, String> {
    let mut uploaded = BTreeMap::new();
    for info in upload_order(infos) {
        let output = built
            .iter()
            .find(|o| o.path.to_absolute() == info.path)
            .ok_or_else(|| format!("Nix described {}, which is not an output", info.path))?;
        let request = request(info).map_err(|e| format!("path info of {}: {e}", info.path))?;
        let outcome = shared
            .client
            .upload_path(&request, &output.real)
            .await
            .map_err(|e| format!("uploading {} to the cache failed: {}", info.path, chain(&e)))?;
        tracing::debug!(path = %info.path, already_present = outcome.already_present, "output uploaded");
        uploaded.insert(
            output.name.clone(),
            OutputInfo {
                path: info.path.clone(),
                nar_hash: outcome.nar_hash.to_typed_nix32(),
                nar_size: outcome.nar_size,
            },
        );
    }
    Ok(uploaded)
}

/// The upload request for a path: Nix's references, deriver and content address, and its
/// NAR hash and size, which the cache checks against the NAR Kiln packs.
fn request(info: &PathInfo) -> Result<UploadRequest, String> {
    let parse = |p: &str| StorePath::parse(p).map_err(|e| e.to_string());
    let mut request = UploadRequest::new(parse(&info.path)?);
    request.references = info
        .references
        .iter()
        .map(|r| parse(r))
        .collect::<Result<_, _>>()?;
    request.deriver = info.deriver.as_deref().map(parse).transpose()?;
    request.ca = info
        .ca
        .as_deref()
        .map(|ca| ca.parse::<ContentAddress>().map_err(|e| e.to_string()))
        .transpose()?;
    request.nar_hash =
        Some(Hash::parse_as(HashAlgo::Sha256, &info.nar_hash).map_err(|e| e.to_string())?);
    request.nar_size = Some(info.nar_size);
    Ok(request)
}

/// Uploads the build log as `log/<drv>`. A failure is logged, not fatal: the outputs are what
/// dependents need, and the live log already reached the coordinator.
pub(crate) async fn log(shared: &Shared, plan: &Plan, text: Vec<u8>) {
    let drv = &plan.basic.drv_path;
    if let Err(err) = shared.client.upload_log(drv, Body::from(text)).await {
        tracing::warn!(drv = %drv, error = %chain(&err), "cannot upload the build log");
    }
}

/// An error with its sources, `a: b: c`.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

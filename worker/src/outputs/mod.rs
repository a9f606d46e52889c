//! A step's outputs after the build: what `nix-support` says about them ([`support`]) and the
//! order they can be uploaded in.

pub mod support;

use std::collections::BTreeMap;

use crate::serve::PathInfo;

/// Orders `infos` so that every output comes after the outputs of the same step it refers to
/// (the cache accepts a path only once its references are there). Self-references and
/// references outside the set are ignored; Nix refuses cycles between outputs, and should one
/// appear anyway the remaining paths are appended in their original order.
pub fn upload_order(infos: &[PathInfo]) -> Vec<&PathInfo> {
    let by_path: BTreeMap<&str, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, info)| (info.path.as_str(), i))
        .collect();
    let mut done = vec![false; infos.len()];
    let mut order = Vec::with_capacity(infos.len());
    while order.len() < infos.len() {
        let before = order.len();
        for (i, info) in infos.iter().enumerate() {
            if done[i] {
                continue;
            }
            let ready = info
                .references
                .iter()
                .all(|r| match by_path.get(r.as_str()) {
                    Some(&j) => j == i || done[j],
                    None => true,
                });
            if ready {
                done[i] = true;
                order.push(info);
            }
        }
        if order.len() == before {
            order.extend(
                infos
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !done[*i])
                    .map(|(_, info)| info),
            );
            break;
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(path: &str, refs: &[&str]) -> PathInfo {
        PathInfo {
            path: path.into(),
            deriver: None,
            references: refs.iter().map(|r| r.to_string()).collect(),
            nar_size: 0,
            nar_hash: String::new(),
            ca: None,
            sigs: vec![],
        }
    }

    #[test]
    fn outputs_come_after_the_outputs_they_refer_to() {
        let infos = [
            info("/bin", &["/lib", "/bin", "/dep"]),
            info("/dev", &["/bin", "/lib"]),
            info("/lib", &["/lib", "/dep"]),
        ];
        let order: Vec<_> = upload_order(&infos)
            .iter()
            .map(|i| i.path.as_str())
            .collect();
        assert_eq!(order, ["/lib", "/bin", "/dev"]);
    }

    #[test]
    fn a_cycle_does_not_lose_paths() {
        let infos = [info("/a", &["/b"]), info("/b", &["/a"]), info("/c", &[])];
        let order: Vec<_> = upload_order(&infos)
            .iter()
            .map(|i| i.path.as_str())
            .collect();
        assert_eq!(order, ["/c", "/a", "/b"]);
    }
}

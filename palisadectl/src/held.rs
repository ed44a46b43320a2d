//! `wait --for-file`: the revision that holds what a file says. A file edited in the
//! controller's manifests directory (or applied) is committed some time later, at a revision
//! nobody printed; this asks the controller for the file's objects until it holds every one
//! exactly as the file defines it, and answers with the revision of that answer, which holds
//! them all. Objects removed from the file cannot be seen in it: waiting for their deletion
//! needs the revision `apply`/`delete` printed.

use std::time::{Duration, Instant};

use palisade_policy::manifest::Object;
use palisade_proto::v1 as pb;
use serde_json::Value;

use crate::remote::{client, Conn, RemoteError};

/// Most objects asked for in one call (the controller takes 10,000).
const BATCH: usize = 5_000;

/// The revision at which the controller held every object of `objects` as given, waiting up
/// to `timeout`; on timeout, the error names the objects not (yet) held as written.
pub async fn revision_holding(
    conn: &Conn,
    objects: &[&Object],
    timeout: Duration,
) -> Result<u64, RemoteError> {
    if objects.is_empty() {
        return Err(RemoteError::Usage(
            "the files define no Namespace, Pod or NetworkPolicy to wait for".into(),
        ));
    }
    let wanted: Vec<(pb::ObjectKey, Value)> = objects
        .iter()
        .map(|o| {
            let key = pb::ObjectKey {
                kind: o.kind().to_string(),
                name: o.name(),
            };
            let json: Value = serde_json::from_str(&o.to_json()).expect("model JSON parses");
            (key, json)
        })
        .collect();
    let mut c = client(conn).await?;
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    loop {
        let mut revision = 0;
        let mut differing = Vec::new();
        for chunk in wanted.chunks(BATCH) {
            let r = c
                .get_objects(pb::GetObjectsRequest {
                    objects: chunk.iter().map(|(k, _)| k.clone()).collect(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            // Each batch is held as written at its answer's revision, so all of them at the
            // latest of those (unless something changed them again in between).
            revision = revision.max(r.revision);
            if r.objects.len() != chunk.len() {
                return Err(RemoteError::Usage(format!(
                    "the controller answered for {} of the {} objects asked about",
                    r.objects.len(),
                    chunk.len()
                )));
            }
            for ((key, want), held) in chunk.iter().zip(&r.objects) {
                let same = held.found
                    && serde_json::from_str::<Value>(&held.json).is_ok_and(|v| v == *want);
                if !same {
                    let how = if held.found {
                        "held differently"
                    } else {
                        "not held"
                    };
                    differing.push(format!("{} {} ({how})", key.kind, key.name));
                }
            }
            if !differing.is_empty() {
                break;
            }
        }
        if differing.is_empty() {
            return Ok(revision);
        }
        if Instant::now() >= deadline {
            let n = differing.len();
            let shown: Vec<String> = differing.into_iter().take(5).collect();
            return Err(RemoteError::NotYet(format!(
                "after {}, the controller does not hold {n} of the {} objects as the files define them: {}{}",
                humantime::format_duration(timeout),
                wanted.len(),
                shown.join(", "),
                if n > 5 { ", ..." } else { "" }
            )));
        }
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

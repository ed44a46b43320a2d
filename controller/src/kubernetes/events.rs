//! Kubernetes Events for objects the API server accepted but Palisade rejects
//! (`--emit-events`): a Warning `Rejected` on the object, from the leader only, off the
//! source's loop (a bounded queue; a full one drops the event, never the rejection), at most
//! once per object version. Repeats within a few minutes become a series (kube's Recorder).

use std::collections::HashSet;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tracing::warn;

/// Events queued before new ones are dropped.
pub const QUEUE: usize = 256;

/// Publish what arrives on `rx` until it closes.
pub async fn publish(client: kube::Client, mut rx: mpsc::Receiver<(ObjectReference, String)>) {
    let reporter = Reporter {
        controller: "palisade-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client, reporter);
    let mut sent: HashSet<(Option<String>, Option<String>)> = HashSet::new();
    while let Some((reference, why)) = rx.recv().await {
        if !sent.insert((reference.uid.clone(), reference.resource_version.clone())) {
            continue;
        }
        if sent.len() > 100_000 {
            sent.clear();
        }
        let mut note = format!(
            "Palisade does not enforce this version (the last valid one stays in force): {why}"
        );
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push('…');
        }
        let event = Event {
            type_: EventType::Warning,
            reason: "Rejected".into(),
            note: Some(note),
            action: "Enforce".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!("cannot record an Event for {why}: {e}");
        }
    }
}

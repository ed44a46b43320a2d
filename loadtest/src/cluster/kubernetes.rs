//! The churn through the Kubernetes source: the synthetic cluster is served by the API-server
//! emulator (real HTTP, in this process) and every replica is given its kubeconfig, so the
//! leader of the moment lists and watches it and proposes what changed. A change is written
//! to the emulator, whose acknowledgement is the API server's: the change must reach the
//! replicated state. The source batches changes and answers nobody, so each change's
//! revision is found by asking a replica (`Introspection.GetObjects`) until it holds the
//! object as written (or no longer holds a deleted one): the change was committed after the
//! previous change's revision and at or before the applied revision of that answer.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade_kube_emulator::{Emulator, Options};
use palisade_policy::manifest::{command_key, Object};
use palisade_policy::model::Command;

use super::channels::Channels;
use super::churn::Change;
use super::faults::Shared;
use super::model::Model;
use super::store::Acked;
use crate::kube::resource;
use crate::manifests;
use crate::synth::Rng;

/// How soon a replica is asked again whether it holds a change yet, doubling up to
/// [`MAX_POLL`] (each question waits its turn on the replica's apply thread).
const POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(32);

pub struct KubeFeed {
    emulator: Emulator,
    kubeconfig: PathBuf,
    channels: Channels,
    rng: Rng,
    /// The applied revision at which the last change was seen.
    pub revision: u64,
    /// Questions to a replica that went unanswered (faults).
    pub lost_answers: u64,
}

/// Write `c` (an upsert or a delete) to the emulator.
fn write(emulator: &Emulator, c: &Command) {
    match manifests::object(c) {
        Some(object) => {
            emulator.apply(resource(c), object);
        }
        None => {
            emulator.delete(resource(c), &command_key(c).1);
        }
    }
}

impl KubeFeed {
    /// Start the emulator with the initial objects and write its kubeconfig into `dir`;
    /// `history` changes are kept for watches to resume from.
    pub async fn start(dir: &Path, commands: &[Command], history: usize) -> anyhow::Result<Self> {
        let emulator = Emulator::start(Options {
            history,
            ..Options::default()
        })
        .await?;
        for c in commands {
            write(&emulator, c);
        }
        let kubeconfig = dir.join("kubeconfig");
        emulator.write_kubeconfig(&kubeconfig)?;
        Ok(KubeFeed {
            emulator,
            kubeconfig,
            channels: Channels::default(),
            rng: crate::synth::Rng::new(0x6b75_6265),
            revision: 0,
            lost_answers: 0,
        })
    }

    /// What every replica is started with.
    pub fn controller_args(&self) -> Vec<OsString> {
        vec!["--kubeconfig".into(), self.kubeconfig.clone().into()]
    }

    /// Wait until the leader has committed its first lists (one batch, perhaps several log
    /// entries); the revision that holds them.
    pub async fn loaded(&mut self, replicas: &Shared, limit: Duration) -> anyhow::Result<u64> {
        let started = Instant::now();
        loop {
            let h = replicas.lock().expect("replicas").handle();
            for id in h.alive() {
                let page = h.metrics(*id);
                if crate::replicas::sum(&page, "palisade_kube_batches_total") >= 1.0 {
                    let revision = crate::replicas::sum(&page, "palisade_revision ") as u64;
                    self.revision = revision;
                    return Ok(revision);
                }
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "no replica committed the API server's lists within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Write `change` to the API server and wait (at most `deadline`) until a replica holds
    /// it. A change that leaves the object as the model holds it is written but not waited
    /// for: the source proposes nothing for it.
    pub async fn apply(
        &mut self,
        replicas: &Shared,
        change: &Change,
        model: &Model,
        deadline: Duration,
    ) -> anyhow::Result<Acked> {
        let command = &change.commands[0];
        let key = command_key(command);
        let want = Object::from_command(command.clone());
        let after = self.revision;
        let unchanged = model.object(&key) == want;
        write(&self.emulator, command);
        if unchanged {
            return Ok(Acked {
                after,
                at: after,
                unchanged: true,
                attempts: 1,
            });
        }
        let started = Instant::now();
        let mut attempts = 0;
        let mut poll = POLL;
        // What each replica asked last answered: its applied revision, or why it did not.
        let mut last: BTreeMap<u64, String> = BTreeMap::new();
        loop {
            // A different live replica each time: one that is cut off or behind must not
            // hold the churn up (nor one that skipped the change, with a planted fault).
            let h = replicas.lock().expect("replicas").handle();
            anyhow::ensure!(!h.alive().is_empty(), "no replica is running");
            let id = h.alive()[self.rng.below(h.alive().len())];
            attempts += 1;
            match self
                .channels
                .objects(&h, id, std::slice::from_ref(&key))
                .await
            {
                // Before `after` a replica may be behind an earlier change; past it, the
                // state differs from the model's until this change is applied.
                Ok((revision, held))
                    if revision > after && held[0].as_ref().map(|(_, o)| o) == want.as_ref() =>
                {
                    self.revision = revision;
                    return Ok(Acked {
                        after,
                        at: revision,
                        unchanged: false,
                        attempts,
                    });
                }
                Ok((revision, _)) => {
                    last.insert(
                        id,
                        format!("replica {id} at revision {revision}, not as written"),
                    );
                }
                Err(e) => {
                    self.lost_answers += 1;
                    last.insert(id, e.to_string());
                }
            }
            anyhow::ensure!(
                started.elapsed() < deadline,
                "{} {}: no replica held the change as written within {deadline:?} (after revision {after}); last answers: {}",
                key.0,
                key.1,
                last.values().cloned().collect::<Vec<_>>().join("; ")
            );
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(MAX_POLL);
        }
    }
}

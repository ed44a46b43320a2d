//! Where the load and the churn go in: the standalone store (`palisadectl apply`'s admin
//! API, each change acknowledged with its revision) or the Kubernetes API (the emulator,
//! read by the leader's Kubernetes source). Either way each change ends as an [`Acked`]: the
//! revision range it was committed in, which the model and the checker rely on.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use palisade_policy::model::Command;

use super::churn::Change;
use super::faults::Shared;
use super::kubernetes::KubeFeed;
use super::model::Model;
use super::phase::Phase;
use super::store::{Acked, Store};
use crate::manifests;

/// Objects per apply while loading through the store (each apply is one log entry, well
/// under its size limit).
const LOAD_CHUNK: usize = 500;

/// Where the objects come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The standalone store: `palisade.v1.Admin`, what `palisadectl apply` uses.
    Store,
    /// The Kubernetes API: the API-server emulator (in this process), listed and watched by
    /// the leader's Kubernetes source (every replica is given its kubeconfig).
    Kubernetes,
}

impl Source {
    /// What the load goes through, for people.
    pub fn through(self) -> &'static str {
        match self {
            Source::Store => "the store",
            Source::Kubernetes => "the Kubernetes API",
        }
    }
}

pub enum Feed {
    Store(Store),
    Kube(KubeFeed),
}

impl Feed {
    /// Ready to load `initial` (the Kubernetes API holds it from the start; the store is
    /// loaded once the replicas run). `changes` is how many changes the churn may make.
    pub async fn new(
        source: Source,
        seed: u64,
        dir: &Path,
        initial: &[Command],
        changes: usize,
    ) -> anyhow::Result<Feed> {
        Ok(match source {
            Source::Store => Feed::Store(Store::new(seed)),
            Source::Kubernetes => {
                Feed::Kube(KubeFeed::start(dir, initial, changes * 2 + 10_000).await?)
            }
        })
    }

    /// What every replica is started with.
    pub fn controller_args(&self) -> Vec<OsString> {
        match self {
            Feed::Store(_) => Vec::new(),
            Feed::Kube(k) => k.controller_args(),
        }
    }

    /// The source that owns what this feed writes, as the replicas name it.
    pub fn owner(&self) -> &'static str {
        match self {
            Feed::Store(_) => palisade_controller::admin::OWNER,
            Feed::Kube(_) => palisade_controller::kubernetes::OWNER,
        }
    }

    /// Bring the initial objects into the replicated state and the model; the revision
    /// that holds them.
    pub async fn load(
        &mut self,
        replicas: &Shared,
        initial: &[Command],
        model: &mut Model,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<u64> {
        match self {
            Feed::Store(store) => {
                let chunks = initial.len().div_ceil(LOAD_CHUNK) as u64;
                let mut bar = Phase::new("loading", chunks, "applies", progress);
                for (i, chunk) in initial.chunks(LOAD_CHUNK).enumerate() {
                    let docs: Vec<String> = chunk.iter().filter_map(manifests::document).collect();
                    let acked = store
                        .apply(replicas, docs, false, Duration::from_secs(120))
                        .await?;
                    model.apply(acked.after, acked.at, chunk.to_vec());
                    bar.set(i as u64 + 1);
                }
                Ok(store.revision)
            }
            Feed::Kube(kube) => {
                progress("waiting for the leader to list the API server and commit its lists");
                let at = kube.loaded(replicas, Duration::from_secs(900)).await?;
                model.apply(0, at, initial.to_vec());
                Ok(at)
            }
        }
    }

    /// Make `change`, at most `deadline` long: its revision range once it is in the
    /// replicated state.
    pub async fn apply(
        &mut self,
        replicas: &Shared,
        change: &Change,
        model: &Model,
        deadline: Duration,
    ) -> anyhow::Result<Acked> {
        match self {
            Feed::Store(store) => {
                store
                    .apply(
                        replicas,
                        vec![change.document.clone()],
                        change.delete,
                        deadline,
                    )
                    .await
            }
            Feed::Kube(kube) => kube.apply(replicas, change, model, deadline).await,
        }
    }

    /// The revision of the last change.
    pub fn revision(&self) -> u64 {
        match self {
            Feed::Store(s) => s.revision,
            Feed::Kube(k) => k.revision,
        }
    }

    /// Questions whose answer was lost (faults).
    pub fn lost_answers(&self) -> u64 {
        match self {
            Feed::Store(s) => s.lost_answers,
            Feed::Kube(k) => k.lost_answers,
        }
    }
}

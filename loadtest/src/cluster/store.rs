//! The load test as a client of the standalone store (`palisade.v1.Admin`, what `palisadectl
//! apply` uses): one change at a time, sent to a live replica (a follower forwards it to the
//! leader), retried on another when the answer is lost, until the store acknowledges it.
//! A change whose first answer was lost and whose retry finds it already done was committed
//! somewhere between the previous change and the retry's answer: the model is told so.

use std::time::{Duration, Instant};

use palisade_proto::v1::admin_client::AdminClient;
use palisade_proto::v1::{ApplyRequest, ApplyResponse, Document};

use super::channels::Channels;
use super::faults::Shared;
use crate::replicas::Handle;
use crate::synth::Rng;

/// An acknowledged change: committed at a revision in `(after, at]`.
#[derive(Clone, Copy, Debug)]
pub struct Acked {
    pub after: u64,
    pub at: u64,
    /// Nothing changed (an identical object, or already done by a lost attempt).
    pub unchanged: bool,
    pub attempts: u32,
}

/// An apply (or delete) of `documents`, named by their position.
fn request(documents: Vec<String>, delete: bool) -> ApplyRequest {
    ApplyRequest {
        documents: documents
            .into_iter()
            .enumerate()
            .map(|(i, text)| Document {
                source: format!("loadtest-{i}"),
                text,
            })
            .collect(),
        default_namespace: "default".into(),
        delete,
        dry_run: false,
        hops: 0,
    }
}

pub struct Store {
    channels: Channels,
    rng: Rng,
    /// The revision of the last acknowledged change.
    pub revision: u64,
    /// Attempts whose answer was lost (failed, timed out, refused), over the run.
    pub lost_answers: u64,
}

impl Store {
    pub fn new(seed: u64) -> Store {
        Store {
            channels: Channels::default(),
            rng: Rng::new(seed ^ 0x5707e),
            revision: 0,
            lost_answers: 0,
        }
    }

    async fn send(
        &mut self,
        r: &Handle,
        id: u64,
        req: ApplyRequest,
        timeout: Duration,
    ) -> anyhow::Result<ApplyResponse> {
        let channel = self.channels.get(r, id).await?;
        let mut client = AdminClient::new(channel).max_encoding_message_size(64 << 20);
        let call = client.apply(req);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => {
                if status.code() == tonic::Code::InvalidArgument
                    || status.code() == tonic::Code::FailedPrecondition
                {
                    anyhow::bail!("the store refused a change: {}", status.message());
                }
                self.channels.forget(id);
                Err(anyhow::anyhow!("{status}"))
            }
            Err(_) => {
                self.channels.forget(id);
                anyhow::bail!("no answer within {timeout:?}")
            }
        }
    }

    /// Send `documents` (or delete the objects they name) until the store acknowledges
    /// them, at most `deadline` long. A refusal (invalid object, another owner) is an error
    /// at once: the load test sent something wrong.
    pub async fn apply(
        &mut self,
        r: &Shared,
        documents: Vec<String>,
        delete: bool,
        deadline: Duration,
    ) -> anyhow::Result<Acked> {
        let started = Instant::now();
        let after = self.revision;
        let req = request(documents, delete);
        let mut attempts = 0u32;
        loop {
            let h = r.lock().expect("replicas").handle();
            anyhow::ensure!(!h.alive().is_empty(), "no replica is running");
            let id = h.alive()[self.rng.below(h.alive().len())];
            attempts += 1;
            match self
                .send(&h, id, req.clone(), Duration::from_secs(30))
                .await
            {
                Ok(resp) => {
                    let unchanged = resp
                        .changes
                        .iter()
                        .all(|c| c.action == "unchanged" || c.action == "not found");
                    // Done by this attempt (exact), or nothing to do; after a lost attempt,
                    // somewhere after the previous change (the lost one may have been
                    // committed before or even after this one was checked).
                    let exact = attempts == 1;
                    let noop = unchanged && attempts == 1;
                    let at = resp.revision.max(after);
                    if !noop {
                        self.revision = at;
                    }
                    return Ok(Acked {
                        after: if exact { at.saturating_sub(1) } else { after },
                        at,
                        unchanged: noop,
                        attempts,
                    });
                }
                Err(e) if e.to_string().starts_with("the store refused") => return Err(e),
                Err(e) => {
                    self.lost_answers += 1;
                    anyhow::ensure!(
                        started.elapsed() < deadline,
                        "the store did not acknowledge a change within {deadline:?} ({attempts} attempts; last: {e})"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

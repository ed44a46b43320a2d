//! Where a change's time goes, stage by stage, so a slow figure says which part is slow:
//! `palisade_stage_seconds{stage}`.
//!
//! * `ingest`: an operator's apply received to its commands proposed (parsing, validation).
//! * `commit`: proposed to committed by the group and handed to the apply thread (leader).
//! * `compile`: one entry applied to the policy engine (every replica).
//! * `encode`: the changed nodes' updates of one entry encoded and recorded (every replica).
//! * `send`: an entry applied to the update carrying it handed to an agent's stream
//!   (streams already in sync; resumes and first snapshots are not counted).
//! * `ack`: an update handed to an in-sync agent's stream to the agent's ack of it (the
//!   network both ways and the agent's apply).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

pub struct Stages(Family<StageLabel, Histogram>);

impl Stages {
    pub fn register(registry: &mut Registry) -> Stages {
        // 50 µs .. ~26 s
        let f = Family::<StageLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        registry.register(
            "stage_seconds",
            "Time a change spends in each stage: ingest, commit, compile, encode, send, ack",
            f.clone(),
        );
        Stages(f)
    }
}

impl super::Metrics {
    pub fn stage(&self, stage: &'static str, took: Duration) {
        self.0
            .stages
            .0
            .get_or_create(&StageLabel { stage })
            .observe(took.as_secs_f64());
    }
}

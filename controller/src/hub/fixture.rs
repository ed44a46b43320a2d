//! A replica's applied state with its hub, as the apply thread keeps them, for unit tests
//! (the test is the apply thread: it applies and answers questions).

use std::sync::Arc;

use palisade_replica::{Batch, Machine};

use super::{Hub, Reads};
use crate::applied::State;
use crate::history::Limits;
use crate::metrics::Metrics;
use crate::view::View;

pub struct Applied {
    pub hub: Hub,
    pub state: State,
    pub reads: Reads,
}

impl Applied {
    /// An empty state of replica `replica`.
    pub fn new(replica: u64) -> Applied {
        let (hub, reads) = Hub::new(replica, Metrics::new());
        let state = State::new(Machine::new(), Limits::default(), &hub);
        Applied { hub, state, reads }
    }

    /// Apply `entries` as the apply thread does.
    pub fn apply(&mut self, entries: &[(u64, Option<Batch>)]) {
        self.state.apply(&self.hub, entries);
    }

    /// The view readers see now.
    pub fn view(&self) -> Arc<View> {
        self.hub.view()
    }
}

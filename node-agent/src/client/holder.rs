//! The policy-holding half of the agent: what the dataplane holds, where it is saved, and how
//! one message from the controller changes it (decided by `palisade_proto::receive`; saved to
//! disk, then installed in the dataplane).

use std::sync::Arc;

use palisade_policy::delta::SliceDelta;
use palisade_policy::slice::NodeSlice;
use palisade_policy::Digest;
use palisade_proto::receive::{receive, Received};
use palisade_proto::v1::controller_message::Msg;
use tracing::warn;

use crate::dataplane::{Dataplane, Installed};
use crate::store::StateStore;

/// What a message calls for.
pub(super) enum Reply {
    Ack(u64, Digest, Installed),
    Nack(u64, String),
    /// Nack, then end the session and come back later: a local failure (the state cannot be
    /// saved) that a reconnection retries.
    NackAndRetry(u64, String),
    Nothing,
}

/// The policy-holding half of the agent: what the dataplane holds and where it is saved.
/// Moved into a blocking task for each message (installing and fsyncing block).
pub(super) struct Holder<D> {
    pub(super) held: NodeSlice,
    /// What the last install left failed closed.
    pub(super) installed: Installed,
    pub(super) dataplane: D,
    pub(super) store: Arc<StateStore>,
}

impl<D: Dataplane> Holder<D> {
    /// Save `target`, then install it. Disk first: a restart reinstalls what is saved, so
    /// what is saved must never be older than what the dataplane holds and was acked. A slice
    /// that cannot be saved is not installed (and not acked); a slice that cannot be installed
    /// is unsaved again.
    fn install(&mut self, target: NodeSlice, delta: Option<&SliceDelta>) -> Reply {
        let (version, digest) = (target.version, target.digest());
        if let Err(e) = self.store.save(&target) {
            return Reply::NackAndRetry(
                version,
                format!("cannot save the slice, so it is not applied: {e}"),
            );
        }
        let installed = match self.dataplane.install(&target, delta) {
            Ok(i) => i,
            Err(e) => {
                if let Err(undo) = self.store.save(&self.held) {
                    warn!("cannot save the held slice back after a failed install: {undo}");
                }
                return Reply::Nack(version, e.to_string());
            }
        };
        if let Some(w) = &installed.warning {
            warn!(version, "{w}");
        }
        self.held = target;
        self.installed = installed.clone();
        Reply::Ack(version, digest, installed)
    }

    pub(super) fn handle(&mut self, msg: Msg) -> Reply {
        match receive(&self.held, msg) {
            Received::Nothing => Reply::Nothing,
            Received::Refused { version, why } => Reply::Nack(version, why),
            Received::Held { version, digest } => {
                Reply::Ack(version, digest, self.installed.clone())
            }
            Received::Install { slice, delta } => self.install(slice, delta.as_ref()),
        }
    }
}

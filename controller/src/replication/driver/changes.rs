//! The driver's part in membership changes: proposing an operator's change (a leader asked
//! to remove itself hands leadership over first), promoting a caught-up learner, and
//! carrying out a change once applied.

use super::*;

impl Driver {
    /// Propose an operator's membership change, or say why not. A leader asked to remove
    /// itself hands leadership to the voter furthest along first (the operator asks again).
    pub(super) fn change(
        &mut self,
        mut change: Change,
        retired: &std::collections::BTreeSet<u64>,
    ) -> Result<u64, ChangeFailed> {
        if !self.replica.is_leader() {
            let leader = self.replica.status().leader;
            return Err(ProposeFailed::NotLeader {
                leader: (leader != 0).then_some(leader),
            }
            .into());
        }
        let members = self.replica.members();
        // Answering: heard from within two election timeouts (raft-rs's own `recent_active`
        // is cleared at every check-quorum round, so a live peer can look idle for a moment).
        let window = self.config.tick * (2 * self.config.options.election_tick as u32);
        let mut active: std::collections::BTreeSet<u64> = self
            .outbox
            .transport()
            .contacts()
            .into_iter()
            .filter(|(_, at)| at.elapsed() < window)
            .map(|(id, _)| id)
            .collect();
        active.extend(
            self.replica
                .progress()
                .into_iter()
                .filter(|(_, _, active)| *active)
                .map(|(id, _, _)| id),
        );
        active.insert(self.config.id);
        membership::check(
            &change,
            &members,
            retired,
            &active,
            self.replica.has_pending_change(),
        )?;
        if change.kind == Kind::Remove && change.id == self.config.id {
            let to = self
                .replica
                .progress()
                .into_iter()
                .filter(|(id, _, _)| {
                    *id != self.config.id && active.contains(id) && members.voters.contains(id)
                })
                .max_by_key(|(_, matched, _)| *matched)
                .map(|(id, _, _)| id)
                .ok_or(ChangeFailed::Propose(ProposeFailed::Stopped(
                    "no other voter is reachable to hand leadership to".into(),
                )))?;
            info!(to, "handing leadership over before this replica is removed");
            self.replica.transfer_leader(to);
            return Err(ChangeFailed::Handing {
                from: self.config.id,
                to,
            });
        }
        change.request = fastrand::u64(1..);
        match self.replica.propose_change(&change) {
            Ok(()) => {
                info!(replica = change.id, kind = ?change.kind, address = %change.address, "membership change proposed");
                Ok(change.request)
            }
            Err(ProposeError::NotLeader { leader }) => {
                Err(ProposeFailed::NotLeader { leader }.into())
            }
            Err(ProposeError::Dropped(why)) => Err(ProposeFailed::Stopped(why).into()),
        }
    }

    /// On the leader: promote a learner to voter once it holds everything committed and
    /// answers (one change at a time).
    pub(super) fn promote(&mut self) {
        if !self.replica.is_leader() || self.replica.has_pending_change() {
            return;
        }
        let members = self.replica.members();
        if members.learners.is_empty() {
            return;
        }
        let commit = self.replica.status().commit;
        let ready = self
            .replica
            .progress()
            .into_iter()
            .find(|(id, matched, active)| {
                members.learners.contains(id) && *active && *matched >= commit
            });
        if let Some((id, matched, _)) = ready {
            let change = Change {
                kind: Kind::Promote,
                id,
                address: String::new(),
                request: 0,
            };
            match self.replica.propose_change(&change) {
                Ok(()) => info!(
                    replica = id,
                    matched, "learner caught up: promoting it to voter"
                ),
                Err(e) => tracing::debug!(replica = id, "cannot promote the learner yet: {e}"),
            }
        }
    }

    /// A membership change committed: reach (or stop reaching) the replica it names; a
    /// replica removed itself takes no further part.
    pub(super) fn membership_applied(&self, index: u64, change: Option<&Change>) {
        let Some(c) = change else { return };
        let transport = self.outbox.transport();
        match c.kind {
            Kind::AddLearner => {
                if let Err(e) = transport.learn(c.id, &c.address) {
                    error!(replica = c.id, "cannot reach the replica added: {e}");
                }
            }
            Kind::Promote => {}
            Kind::Remove if c.id == self.config.id => self.failure.set(format!(
                "replica {} was removed from the group at index {index}; its id is retired and it takes no further part",
                c.id
            )),
            Kind::Remove => transport.retire(c.id),
        }
    }
}

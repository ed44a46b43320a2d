//! How fresh an online answer is. The controller replica that answers serves its applied
//! state and says, with the answer, the revision it reflects and whether it could confirm it
//! is current (`palisade.v1.Freshness`). Here that becomes a warning on stderr when it could
//! not, a `freshness` object in JSON, and the `--consistent` flag that asks the replica to
//! confirm with the leader first.

use palisade_proto::v1 as pb;
use serde_json::{json, Value};

/// How the online reads (`nodes`, `node`, `explain`, `get`) are served.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct ReadArgs {
    /// Confirm with the leader before answering (Raft's read index): the answer then holds
    /// everything committed when it was asked. Fails (exit 1, naming why) when the replica
    /// cannot (no leader, or a leader that lost its quorum); ask another replica then.
    /// Without it a replica answers from what it has applied, and says so when it cannot
    /// confirm that is current.
    #[arg(long)]
    pub consistent: bool,
}

/// The warning for an answer its replica could not confirm is current, if it could not.
pub fn warning(f: Option<&pb::Freshness>) -> Option<String> {
    let f = f?;
    if f.current {
        return None;
    }
    Some(format!(
        "warning: replica {} answered from revision {} and cannot confirm it is current: {}. Use --consistent to confirm with the leader.",
        f.replica,
        f.revision,
        if f.reason.is_empty() { "no reason given" } else { &f.reason }
    ))
}

/// With `--consistent`, the answer must say it was confirmed with the leader: a controller
/// older than this palisadectl ignores the request's field and answers from what it applied.
pub fn require(
    consistent: bool,
    f: Option<&pb::Freshness>,
) -> Result<(), crate::remote::RemoteError> {
    if consistent && !f.is_some_and(|f| f.confirmed) {
        return Err(crate::remote::RemoteError::Usage(
            "the controller did not confirm its answer with the leader: it is older than this palisadectl and cannot serve --consistent; upgrade it, or read without --consistent".into(),
        ));
    }
    Ok(())
}

/// Say [`warning`] on stderr.
pub fn warn(f: Option<&pb::Freshness>) {
    if let Some(w) = warning(f) {
        eprintln!("{w}");
    }
}

/// The `freshness` object of JSON and YAML output (`null` from a controller that sends none).
pub fn json(f: Option<&pb::Freshness>) -> Value {
    match f {
        None => Value::Null,
        Some(f) => json!({
            "revision": f.revision,
            "commit": f.commit,
            "current": f.current,
            "reason": if f.reason.is_empty() { Value::Null } else { Value::from(f.reason.as_str()) },
            "confirmedWithLeader": f.confirmed,
            "replica": f.replica,
            "leader": f.leader,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_when_not_current() {
        let mut f = pb::Freshness {
            revision: 7,
            commit: 9,
            current: true,
            replica: 2,
            leader: 1,
            ..Default::default()
        };
        assert_eq!(warning(Some(&f)), None);
        assert_eq!(warning(None), None);
        f.current = false;
        f.reason = "this replica knows no leader".into();
        let w = warning(Some(&f)).unwrap();
        assert!(w.contains("replica 2 answered from revision 7"), "{w}");
        assert!(w.contains("this replica knows no leader"));
        assert_eq!(json(Some(&f))["reason"], "this replica knows no leader");
        assert_eq!(json(None), Value::Null);
        assert!(require(true, Some(&f)).is_err(), "not confirmed");
        assert!(require(true, None).is_err(), "an older controller");
        assert!(require(false, None).is_ok());
        f.confirmed = true;
        assert!(require(true, Some(&f)).is_ok());
    }
}

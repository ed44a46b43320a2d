//! Rules that `policyTypes` leaves unused: the object has them, nothing enforces them (the
//! model counts them in [`NetworkPolicy::ignored`]).

use super::{count, finding, Check, Finding};
use crate::model::{Direction, NetworkPolicy};

pub(super) fn policy(policy: &NetworkPolicy, out: &mut Vec<Finding>) {
    for dir in Direction::BOTH {
        let n = policy.ignored.of(dir);
        if n == 0 {
            continue;
        }
        let ty = match dir {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        };
        out.push(finding(
            policy,
            format!("spec.{dir}"),
            Check::UnusedRules,
            format!(
                "{} unused: spec.policyTypes does not list {ty}",
                count(n, &format!("{dir} rule"))
            ),
            format!(
                "add {ty} to spec.policyTypes to enforce them (isolating the selected pods for {dir}), or delete them"
            ),
        ));
    }
}

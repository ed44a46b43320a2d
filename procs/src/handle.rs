//! Asking a group's replicas, from async work that must not hold the group: who leads, by
//! one of two rules, and each one's metrics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use palisadectl::output::Output;
use palisadectl::remote::Conn;

use crate::group::Security;
use crate::util::http_get;

/// How long one replica is given to answer.
const ASK: Duration = Duration::from_secs(5);

/// No leader by the rule within the time given.
#[derive(Debug, thiserror::Error)]
#[error("no leader {rule} within {limit:?} (replicas asked said: {said})")]
pub struct NoLeader {
    rule: &'static str,
    limit: Duration,
    said: String,
}

/// When a replica counts as the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A live replica names it, and it names itself: a leader that knows it leads.
    Confirmed,
    /// Every replica asked that answers names it, and it runs: what tests comparing
    /// replicas need (a replica that does not answer is not counted).
    Agreed,
}

/// The addresses of a group, and who ran when the handle was taken.
#[derive(Clone, Debug)]
pub struct Handle {
    /// Each member's address and metrics address.
    members: BTreeMap<u64, (String, Option<String>)>,
    alive: Vec<u64>,
    security: Security,
}

impl Handle {
    pub(crate) fn new(
        members: BTreeMap<u64, (String, Option<String>)>,
        alive: Vec<u64>,
        security: Security,
    ) -> Handle {
        Handle {
            members,
            alive,
            security,
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// Members running when the handle was taken.
    pub fn alive(&self) -> &[u64] {
        &self.alive
    }

    /// An operator's connection to member `id`.
    pub fn conn(&self, id: u64) -> Conn {
        self.security.conn(&self.members[&id].0)
    }

    /// Member `id`'s metrics page (empty when it cannot be read).
    pub fn metrics(&self, id: u64) -> String {
        self.members[&id]
            .1
            .as_deref()
            .and_then(|a| http_get(a, "/metrics").ok())
            .unwrap_or_default()
    }

    /// `palisadectl replicas -o json` against member `id` (5 s at most).
    pub async fn replicas(&self, id: u64) -> Option<serde_json::Value> {
        let conn = self.conn(id);
        let asked = palisadectl::store::replicas(&conn, Output::Json);
        let text = tokio::time::timeout(ASK, asked).await.ok()?.ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The leader member `id` knows, if any.
    pub async fn leader_known_to(&self, id: u64) -> Option<u64> {
        self.replicas(id).await?["leader"]
            .as_u64()
            .filter(|l| *l != 0)
    }

    /// The leader by `rule` among members `among` (asked every 50 ms), waiting up to `limit`.
    pub async fn leader(
        &self,
        rule: Rule,
        among: &[u64],
        limit: Duration,
    ) -> Result<u64, NoLeader> {
        let asked = Instant::now();
        loop {
            // What each answered (0: it knows no leader); `None`: no answer.
            let mut said = Vec::new();
            for id in among {
                let answer = self.replicas(*id).await;
                said.push((*id, answer.map(|v| v["leader"].as_u64().unwrap_or(0))));
            }
            let answered: Vec<(u64, u64)> = said
                .iter()
                .filter_map(|(id, l)| Some((*id, (*l)?)))
                .collect();
            let found = match rule {
                Rule::Confirmed => {
                    let mut found = None;
                    for (id, l) in answered.iter().filter(|(_, l)| *l != 0) {
                        if l == id
                            || (self.alive.contains(l)
                                && self.leader_known_to(*l).await == Some(*l))
                        {
                            found = Some(*l);
                            break;
                        }
                    }
                    found
                }
                // Every answer names the same live leader (a replica that does not answer is
                // not counted).
                Rule::Agreed => answered.first().map(|(_, l)| *l).filter(|l| {
                    *l != 0 && self.alive.contains(l) && answered.iter().all(|(_, a)| a == l)
                }),
            };
            if let Some(l) = found {
                return Ok(l);
            }
            if asked.elapsed() >= limit {
                return Err(NoLeader {
                    rule: match rule {
                        Rule::Confirmed => "confirmed by itself",
                        Rule::Agreed => "agreed by every replica",
                    },
                    limit,
                    said: format!("{said:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

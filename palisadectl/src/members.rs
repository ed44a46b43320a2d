//! `replicas add|remove|replace`: the group's membership, changed through the running
//! controller (`palisade.v1.Admin.ChangeReplicas`, operator certificates). A replica added
//! joins as a learner and the leader promotes it to voter once it has caught up; a replica
//! removed never comes back under its id. Replacing a replica whose disk was lost is a
//! removal, then an addition under a new id (as etcd's `member remove` / `member add`).

use palisade_proto::v1::admin_client::AdminClient;
use palisade_proto::v1::{ReplicaChangeRequest, ReplicaChangeResponse};

use crate::remote::{self, Conn, RemoteError};

/// `ID=HOST:PORT`: a new replica and where it is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewReplica {
    pub id: u64,
    pub address: String,
}

impl std::str::FromStr for NewReplica {
    type Err = String;
    fn from_str(s: &str) -> Result<NewReplica, String> {
        let (id, address) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not ID=HOST:PORT (for example 4=10.0.0.4:7443)"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("'{id}' is not a replica id (a number from 1)"))?;
        let address = address.trim();
        if !address.contains(':') {
            return Err(format!("'{address}' is not HOST:PORT"));
        }
        Ok(NewReplica {
            id,
            address: address.to_string(),
        })
    }
}

async fn send(
    conn: &Conn,
    req: ReplicaChangeRequest,
) -> Result<ReplicaChangeResponse, RemoteError> {
    Ok(AdminClient::new(remote::channel(conn).await?)
        .change_replicas(req)
        .await?
        .into_inner())
}

fn list(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn configuration(r: &ReplicaChangeResponse) -> String {
    format!("voters {}; learners {}", list(&r.voters), list(&r.learners))
}

/// Add replica `new` as a learner; what to do next.
pub async fn add(conn: &Conn, new: &NewReplica) -> Result<String, RemoteError> {
    let r = send(
        conn,
        ReplicaChangeRequest {
            action: "add".into(),
            id: new.id,
            address: new.address.clone(),
            hops: 0,
        },
    )
    .await?;
    Ok(format!(
        "replica {id} added as a learner at revision {index} ({conf})\n\
         next: start replica {id} at {address} with a blank state directory, --id {id}, --peers naming every replica, and its certificate (palisadectl certs --replica {id}); it catches up from the leader, which promotes it to voter once it has (watch: palisadectl replicas)\n",
        id = new.id,
        index = r.index,
        conf = configuration(&r),
        address = new.address,
    ))
}

/// Remove replica `id` for good; what to do next.
pub async fn remove(conn: &Conn, id: u64) -> Result<String, RemoteError> {
    let r = send(
        conn,
        ReplicaChangeRequest {
            action: "remove".into(),
            id,
            address: String::new(),
            hops: 0,
        },
    )
    .await?;
    Ok(format!(
        "replica {id} removed at revision {index} ({conf}); its id is retired: stop it and delete its state directory, and never start it again under id {id}\n",
        index = r.index,
        conf = configuration(&r),
    ))
}

/// Replace replica `old` (its disk lost, say) by `new`: remove, then add. Run again after a
/// failure: a removal or an addition already done is not an error the second time.
pub async fn replace(conn: &Conn, old: u64, new: &NewReplica) -> Result<String, RemoteError> {
    if old == new.id {
        return Err(RemoteError::Usage(format!(
            "a replica never comes back under an id it used: give the replacement a new id, not {old}"
        )));
    }
    let mut out = match remove(conn, old).await {
        Ok(s) => s,
        Err(RemoteError::Status { message, .. })
            if message.contains("was a member of this group and was removed") =>
        {
            format!("replica {old} was removed already\n")
        }
        Err(e) => return Err(e),
    };
    match add(conn, new).await {
        Ok(s) => out.push_str(&s),
        Err(RemoteError::Status { message, .. })
            if message.contains(&format!("replica {} is a member already", new.id)) =>
        {
            out.push_str(&format!("replica {} was added already\n", new.id));
        }
        Err(e) => return Err(e),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_replicas_parse_and_bad_ones_say_what_is_wrong() {
        assert_eq!(
            "4=10.0.0.4:7443".parse::<NewReplica>(),
            Ok(NewReplica {
                id: 4,
                address: "10.0.0.4:7443".into()
            })
        );
        assert!("4"
            .parse::<NewReplica>()
            .unwrap_err()
            .contains("ID=HOST:PORT"));
        assert!("0=a:1"
            .parse::<NewReplica>()
            .unwrap_err()
            .contains("replica id"));
        assert!("4=host"
            .parse::<NewReplica>()
            .unwrap_err()
            .contains("HOST:PORT"));
    }
}

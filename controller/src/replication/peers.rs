//! `--peers 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`: every replica's id and address.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeersError {
    #[error("--peers: '{0}' is not ID=HOST:PORT (for example 1=10.0.0.1:7443)")]
    Syntax(String),
    #[error("--peers: '{0}' is not a replica id (a number from 1)")]
    Id(String),
    #[error("--peers names replica {0} twice")]
    Duplicate(u64),
    #[error(
        "--peers does not name this replica (--id {0}); list every replica, this one included"
    )]
    Missing(u64),
}

/// Parse `--peers` for replica `id`.
pub fn parse_peers(text: &str, id: u64) -> Result<BTreeMap<u64, String>, PeersError> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (n, addr) = part
            .split_once('=')
            .filter(|(_, a)| a.contains(':') && !a.trim().is_empty())
            .ok_or_else(|| PeersError::Syntax(part.to_string()))?;
        let n: u64 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| PeersError::Id(n.to_string()))?;
        if out.insert(n, addr.trim().to_string()).is_some() {
            return Err(PeersError::Duplicate(n));
        }
    }
    if !out.is_empty() && !out.contains_key(&id) {
        return Err(PeersError::Missing(id));
    }
    Ok(out)
}

/// Parse `--peers` for replica `id` running in StatefulSet slot `slot` (its ordinal + 1):
/// when `--peers` does not name `id` (a replica under a new id in a pod whose volume was
/// lost), it is reached at the slot's address, which no longer names the slot's old id.
pub fn parse_peers_in_slot(
    text: &str,
    id: u64,
    slot: Option<u64>,
) -> Result<BTreeMap<u64, String>, PeersError> {
    let Some(slot) = slot.filter(|s| *s != id) else {
        return parse_peers(text, id);
    };
    let mut peers = parse_peers(text, slot)?;
    if !peers.contains_key(&id) {
        let address = peers.remove(&slot).expect("parse_peers checked it");
        peers.insert(id, address);
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_under_a_new_id_takes_its_slots_address() {
        let p = parse_peers_in_slot("1=a:1,2=b:2,3=c:3", 4, Some(2)).unwrap();
        assert_eq!(p.get(&4).map(String::as_str), Some("b:2"));
        assert!(!p.contains_key(&2));
        assert_eq!(p.len(), 3);
        assert_eq!(
            parse_peers_in_slot("1=a:1,2=b:2", 2, Some(2))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse_peers_in_slot("1=a:1,2=b:2", 4, None),
            Err(PeersError::Missing(4))
        );
        assert_eq!(
            parse_peers_in_slot("1=a:1,2=b:2", 4, Some(3)),
            Err(PeersError::Missing(3))
        );
    }

    #[test]
    fn peers_parse_and_bad_lists_say_what_is_wrong() {
        let p = parse_peers("1=a:1, 2=127.0.0.1:7443,3=[::1]:9", 2).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "127.0.0.1:7443");
        assert_eq!(parse_peers("", 1).unwrap().len(), 0);
        assert_eq!(
            parse_peers("1=a:1,x=b:2", 1),
            Err(PeersError::Id("x".into()))
        );
        assert_eq!(parse_peers("1=a:1,1=b:2", 1), Err(PeersError::Duplicate(1)));
        assert_eq!(parse_peers("1=a:1,2=b:2", 3), Err(PeersError::Missing(3)));
        assert!(matches!(parse_peers("1:a", 1), Err(PeersError::Syntax(_))));
        assert!(matches!(parse_peers("0=a:1", 1), Err(PeersError::Id(_))));
    }
}

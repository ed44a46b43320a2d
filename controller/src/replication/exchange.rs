//! The ack tables between replicas: each replica asks every peer for the changes to its table
//! after the last one it holds (a long poll over `palisade.v1.Raft.Acks`, replica certificates
//! only) and merges them into its hub. A peer that cannot be reached for a few seconds no
//! longer counts as having agents connected (they move to other replicas); what it reported
//! before stays (an ack stays true: agents never go back).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_proto::v1::raft_client::RaftClient;
use palisade_proto::v1::{AckTable, AcksRequest};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::hub::Hub;
use crate::replication::transport::Transport;

/// How long a replica holds an ask with nothing new before answering empty.
pub const WAIT: Duration = Duration::from_secs(2);
/// Unanswered this long, a peer's agents are no longer counted as connected to it.
pub const STALE: Duration = Duration::from_secs(3);
/// Largest table accepted from a peer.
const MAX_TABLE_BYTES: usize = 256 << 20;

/// Ask each peer of `transport` for its table until `shutdown`; peers added or removed by
/// membership changes are asked, or no longer, within a second.
pub fn start(hub: Arc<Hub>, id: u64, transport: Arc<Transport>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut asking: BTreeMap<u64, (String, CancellationToken)> = BTreeMap::new();
        loop {
            let addresses = transport.addresses();
            asking.retain(|peer, (address, stop)| {
                // A peer gone, or reached at another address now: its task stops.
                let keep = addresses.get(peer) == Some(address);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for (peer, channel) in transport.channels() {
                let Some(address) = addresses.get(&peer) else {
                    continue;
                };
                if asking.contains_key(&peer) {
                    continue;
                }
                let stop = shutdown.child_token();
                let client = RaftClient::new(channel).max_decoding_message_size(MAX_TABLE_BYTES);
                tokio::spawn(pull(hub.clone(), id, peer, client, stop.clone()));
                asking.insert(peer, (address.clone(), stop));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}

async fn pull(
    hub: Arc<Hub>,
    id: u64,
    peer: u64,
    mut client: RaftClient<Channel>,
    shutdown: CancellationToken,
) {
    let mut last_ok = Instant::now();
    let mut failures = 0u32;
    let mut reachable = true;
    // Where the peer's table stands here: what to ask from.
    let (mut epoch, mut since) = (0, 0);
    loop {
        let ask = AcksRequest {
            from: id,
            epoch,
            since,
            wait_ms: WAIT.as_millis() as u32,
        };
        let call = tokio::time::timeout(WAIT + Duration::from_secs(3), client.acks(ask));
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = call => a,
        };
        match answer {
            Ok(Ok(table)) => {
                if !reachable {
                    info!(peer, "replica {peer}'s acks reach this replica again");
                }
                let table = table.into_inner();
                (epoch, since) = (table.epoch, table.seq);
                let (table, unreadable) = crate::acks::decode(table);
                for why in unreadable {
                    warn!(peer, "an unreadable ack record from replica {peer}: {why}");
                }
                // Merging takes the progress lock for the whole table: off the async workers,
                // which carry Raft's messages.
                let hub = hub.clone();
                let merged = tokio::task::spawn_blocking(move || hub.merge_peer(peer, table));
                if merged.await.is_err() {
                    return;
                }
                last_ok = Instant::now();
                failures = 0;
                reachable = true;
            }
            failed => {
                let why = match failed {
                    Ok(Err(status)) => status.message().to_string(),
                    _ => "no answer in time".to_string(),
                };
                failures += 1;
                if reachable && last_ok.elapsed() >= STALE {
                    info!(peer, %why, "replica {peer} is unreachable: its agents are no longer counted as connected");
                    // What it said is cleared here: ask for its whole table when it answers.
                    (epoch, since) = (0, 0);
                    let hub = hub.clone();
                    let _ = tokio::task::spawn_blocking(move || hub.peer_unreachable(peer)).await;
                    reachable = false;
                } else {
                    debug!(peer, %why, "asking replica {peer} for its acks");
                }
                let delay = palisade_backoff::Backoff::new(
                    Duration::from_millis(100),
                    Duration::from_millis(1600),
                )
                .delay(failures);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A peer's ask: the changes after its position (or the whole table), waiting up to its
/// `wait_ms` (at most 10 s) for one when there is none.
pub async fn answer(hub: &Hub, ask: &AcksRequest) -> AckTable {
    let wait = Duration::from_millis(u64::from(ask.wait_ms).min(10_000));
    let deadline = tokio::time::Instant::now() + wait;
    let mut seq = hub.acks_seq();
    loop {
        let table = table_since(hub, ask.epoch, ask.since);
        if table.full || !table.nodes.is_empty() || tokio::time::Instant::now() >= deadline {
            return table;
        }
        tokio::select! {
            changed = seq.changed() => if changed.is_err() { return AckTable::default() },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The changes to this replica's table after `since` of `epoch` (the whole table when the
/// epoch is another run's), as a peer receives them.
pub fn table_since(hub: &Hub, epoch: u64, since: u64) -> AckTable {
    let table = hub.acks();
    let (full, records) = table.since(epoch, since);
    AckTable {
        epoch: table.epoch(),
        seq: table.seq(),
        applied: *hub.revisions().borrow(),
        full,
        nodes: records
            .iter()
            .map(|(n, r)| crate::acks::to_pb(n, r.as_ref()))
            .collect(),
    }
}

//! Resources an agent, or anyone who can open a socket, can make the controller spend are
//! bounded (contracts.md §10): idle sockets and stalled TLS handshakes, streams per node,
//! the size of what agents say, and agents that keep disagreeing about their slice.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{allow, pod, AgentOpts, Cluster, WAIT};
use palisade_agent::Phase;
use palisade_proto::v1::{self as pb, agent_message::Msg, controller_message};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn shop() -> Vec<(&'static str, String)> {
    vec![(
        "app.yaml",
        [
            pod("shop", "web", "web", "n1", "10.0.0.1"),
            pod("shop", "db", "db", "n2", "10.0.0.2"),
            allow("shop", "db", "db", "web", 5432),
        ]
        .join("---\n"),
    )]
}

/// A Sync stream opened by hand with `node`'s certificate: what a misbehaving agent can do.
async fn raw_stream(
    c: &Cluster,
    node: &str,
) -> (
    mpsc::Sender<pb::AgentMessage>,
    tonic::Streaming<pb::ControllerMessage>,
) {
    let tls = c.tls_of(node);
    let options = palisade_proto::endpoint::Options {
        connect_timeout: Duration::from_secs(5),
        keepalive: None,
    };
    let channel = palisade_proto::endpoint::endpoint(&c.addr.to_string(), Some(&tls), options)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello {
            node: node.to_string(),
            ..pb::Hello::default()
        })),
    })
    .await
    .unwrap();
    let inbound = pb::sync_client::SyncClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

/// The next message that is not a keepalive.
async fn next(inbound: &mut tonic::Streaming<pb::ControllerMessage>) -> controller_message::Msg {
    loop {
        let m = tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("a message in time")
            .expect("the stream works")
            .expect("the stream is open")
            .msg
            .expect("a message");
        if !matches!(m, controller_message::Msg::Keepalive(_)) {
            return m;
        }
    }
}

async fn metric(c: &Cluster, name: &str) -> f64 {
    let text = c.http_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_and_stalled_handshakes_do_not_keep_an_agent_out() {
    // The overall limit is the one reached (the per-address one is unit-tested in listen.rs).
    let mut c = Cluster::start_with(&shop(), &["n1", "n2"], |config| {
        config.connections.max_connections = 500;
        config.connections.max_per_ip = 10_000;
        config.connections.handshake_timeout = Duration::from_secs(30);
    })
    .await;
    // 1,000 sockets that say nothing and 1,000 that start a TLS handshake and stall.
    let mut held = Vec::new();
    for i in 0..2000 {
        let mut s = tokio::net::TcpStream::connect(c.addr).await.unwrap();
        if i % 2 == 1 {
            // A TLS record header announcing a ClientHello that never comes.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
        }
        held.push(s);
    }
    let started = Instant::now();
    c.start_agent("n1", AgentOpts::default());
    c.in_sync("n1").await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the agent synced in {took:?} with 2,000 sockets held open"
    );
    assert!(metric(&c, "palisade_connections_evicted_total").await >= 1000.0);
    let open = metric(&c, "palisade_connections ").await;
    assert!(open <= 510.0, "{open} connections open");
    drop(held);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_are_closed_and_counted() {
    let c = Cluster::start_with(&shop(), &["n1"], |config| {
        config.connections.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while metric(&c, "palisade_connection_failures_total{reason=\"timeout\"}").await < 1.0 {
        assert!(Instant::now() < deadline, "the stalled handshake is closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The controller closed it: reading sees the end.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_per_node_and_what_agents_say_is_bounded() {
    let c = Cluster::start(&shop(), &["n1", "n2"]).await;
    let (tx1, mut in1) = raw_stream(&c, "n2").await;
    let controller_message::Msg::Snapshot(s) = next(&mut in1).await else {
        panic!("a snapshot first")
    };
    let version = s.slice.unwrap().version;
    // A nack and an ack carrying megabytes are stored (and logged) cut short.
    tx1.send(pb::AgentMessage {
        msg: Some(Msg::Nack(pb::Nack {
            version,
            error: "x".repeat(4 << 20),
        })),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let nack = c
            .hub()
            .progress(|p| p.rollout().node("n2").and_then(|r| r.nack.clone()));
        if let Some((_, e)) = nack {
            assert!(e.len() < 2048, "{} bytes kept", e.len());
            break;
        }
        assert!(Instant::now() < deadline, "the nack is recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second stream of the same node replaces the first.
    let (_tx2, mut in2) = raw_stream(&c, "n2").await;
    let _ = next(&mut in2).await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match in1.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "closed".to_string(),
                Err(s) => return s.message().to_string(),
            }
        }
    })
    .await
    .expect("the older stream ends");
    assert!(ended.contains("replaced") || ended == "closed", "{ended}");
    assert_eq!(
        c.hub()
            .progress(|p| p.rollout().node("n2").unwrap().connections),
        1
    );
    // Messages larger than the controller accepts are refused, not buffered.
    let too_big = pb::AgentMessage {
        msg: Some(Msg::Ack(pb::Ack {
            version,
            digest: "0".repeat(64),
            failed_closed: vec!["1.2.3.4".repeat(1000); 4000],
            warning: String::new(),
        })),
    };
    _tx2.send(too_big).await.unwrap();
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            match in2.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s.code()),
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(
        matches!(
            refused,
            Some(tonic::Code::ResourceExhausted) | Some(tonic::Code::Internal) | None
        ),
        "{refused:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_acking_another_digest_gets_snapshots_with_back_off() {
    let c = Cluster::start(&shop(), &["n2"]).await;
    let (tx, mut inbound) = raw_stream(&c, "n2").await;
    let wrong = "ab".repeat(32);
    let mut times = Vec::new();
    for _ in 0..4 {
        let controller_message::Msg::Snapshot(s) = next(&mut inbound).await else {
            panic!("a snapshot")
        };
        times.push(Instant::now());
        tx.send(pb::AgentMessage {
            msg: Some(Msg::Ack(pb::Ack {
                version: s.slice.unwrap().version,
                digest: wrong.clone(),
                ..pb::Ack::default()
            })),
        })
        .await
        .unwrap();
    }
    // The first divergence is answered at once; the next ones wait 1 s, then 2 s.
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[1] >= Duration::from_millis(900), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(1900), "{gaps:?}");
    assert!(
        c.hub()
            .progress(|p| p.rollout().node("n2").unwrap().acked_version)
            == 0
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_cannot_save_does_not_ack_and_retries() {
    let mut c = Cluster::start(&shop(), &["n2"]).await;
    c.start_agent("n2", AgentOpts::default());
    c.in_sync("n2").await;
    let acked = c
        .hub()
        .progress(|p| p.rollout().node("n2").unwrap().acked_version);
    // The agent's saved slice cannot be replaced (a non-empty directory in its place).
    let saved = c.path("agents/n2/slice.pb");
    std::fs::remove_file(&saved).unwrap();
    std::fs::create_dir(&saved).unwrap();
    std::fs::write(saved.join("x"), "").unwrap();
    let before = c.revision();
    c.write("app.yaml", &shop()[0].1.replace("port: 5432", "port: 5433"));
    c.next_revision(before).await;
    let status = c
        .agent_until("n2", "nacks what it cannot save", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot save"))
        })
        .await;
    assert_ne!(status.phase, Phase::Stopped);
    assert_eq!(
        c.hub()
            .progress(|p| p.rollout().node("n2").unwrap().acked_version),
        acked,
        "nothing acked that the agent could not keep"
    );
    let leftovers: Vec<_> = std::fs::read_dir(c.path("agents/n2"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The disk recovers: the agent retries on its own and catches up.
    std::fs::remove_dir_all(&saved).unwrap();
    c.in_sync("n2").await;
    c.shutdown().await;
}

/// Open up to `n` HTTP/2 connections with `node`'s certificate and send nothing on them; the
/// channels that connected (the controller may drop the others after their handshake).
async fn idle_connections(c: &Cluster, node: &str, n: usize) -> Vec<tonic::transport::Channel> {
    let tls = c.tls_of(node);
    let options = palisade_proto::endpoint::Options {
        connect_timeout: Duration::from_secs(5),
        keepalive: None,
    };
    let mut held = Vec::new();
    for _ in 0..n {
        let endpoint =
            palisade_proto::endpoint::endpoint(&c.addr.to_string(), Some(&tls), options).unwrap();
        if let Ok(ch) = endpoint.connect().await {
            held.push(ch);
        }
    }
    held
}

/// 1,100 idle connections with a valid certificate once took every slot of an address, and
/// `palisadectl nodes` from it was refused. Now one identity holds at most its limit, the last
/// slots of an address are kept for operators, a connection idle for 2 s makes room for a
/// new one, and idle connections are closed after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_never_keep_an_operator_or_an_agent_out() {
    let mut c = Cluster::start_with(&shop(), &["n1", "n2"], |config| {
        config.connections.max_per_ip = 40;
        config.connections.max_per_identity = 25;
        config.connections.idle_timeout = Duration::from_secs(5);
    })
    .await;
    let before = metric(&c, "palisade_connections ").await;
    let mut held = idle_connections(&c, "n1", 60).await;
    held.extend(idle_connections(&c, "n2", 60).await);
    // Once the last handshakes are decided (one in a slot kept for operators is dropped).
    let deadline = Instant::now() + WAIT;
    loop {
        let open = metric(&c, "palisade_connections ").await;
        if open - before <= 40.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections open ({before} before): more than the address's limit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let turned_away = metric(&c, "palisade_connections_refused_total").await
        + metric(&c, "palisade_connections_evicted_total").await;
    assert!(
        turned_away >= 60.0,
        "n1's past its identity's limit, and n2's past the address's, turned away: {turned_away}"
    );
    // The address is full of idle connections: the operator takes a slot kept for it.
    let nodes = palisadectl::remote::nodes(
        &c.operator(),
        &Default::default(),
        Default::default(),
        palisadectl::output::Output::Json,
    )
    .await
    .expect("palisadectl nodes gets in");
    assert!(nodes.contains("n1"));
    // An agent gets in too, in place of a connection idle for long enough.
    c.start_agent("n2", AgentOpts::default());
    c.in_sync("n2").await;
    // After the idle timeout, the idle connections are closed; the agent's stream stays.
    let deadline = Instant::now() + WAIT;
    while metric(&c, "palisade_connections_idle_closed_total").await < 30.0 {
        assert!(Instant::now() < deadline, "idle connections are closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.in_sync("n2").await;
    drop(held);
    c.shutdown().await;
}

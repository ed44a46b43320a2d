//! The manifest source of a real controller against slow writers, typos and a disk that
//! refuses writes: enforcement never widens, and nothing is lost.

#[path = "support/cluster.rs"]
mod cluster;

use std::io::Write;
use std::time::Duration;

use cluster::{Cluster, WAIT};

fn microservices() -> Vec<(&'static str, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/microservices");
    ["00-namespace.yaml", "10-pods.yaml", "20-policies.yaml"]
        .into_iter()
        .map(|f| (f, std::fs::read_to_string(format!("{dir}/{f}")).unwrap()))
        .collect()
}

fn policies(c: &Cluster) -> usize {
    c.hub().lock().engine().policies().len()
}

/// Run `write` on a thread while watching the engine: the number of policies it ever held.
async fn fewest_policies_while(c: &Cluster, write: impl FnOnce() + Send + 'static) -> usize {
    let writer = std::thread::spawn(write);
    let mut fewest = policies(c);
    while !writer.is_finished() {
        fewest = fewest.min(policies(c));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.join().unwrap();
    fewest
}

/// Wait until the source has nothing waiting (every change read and applied or refused).
async fn source_idle(c: &Cluster) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.source_health().waiting > 0 {
        assert!(tokio::time::Instant::now() < deadline, "source stays busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_slowly_in_place_never_opens_anything() {
    let manifests = microservices();
    let saved = manifests[2].1.clone();
    let c = Cluster::start(&manifests, &["node-1", "node-2"]).await;
    assert_eq!(policies(&c), 5);
    let before = c.revision();
    let path = c.path("manifests/20-policies.yaml");

    // `(sleep 2; cat saved.yaml) > 20-policies.yaml`: truncated, empty for 2 s, then written.
    let (p, text) = (path.clone(), saved.clone());
    let fewest = fewest_policies_while(&c, move || {
        let mut f = std::fs::File::create(&p).unwrap();
        std::thread::sleep(Duration::from_secs(2)); // the slow writer being simulated
        f.write_all(text.as_bytes()).unwrap();
    })
    .await;
    assert_eq!(fewest, 5, "no policy was ever deleted");
    source_idle(&c).await;
    assert_eq!(c.revision(), before, "the same content: no revision at all");

    // The same content rewritten in 40 pieces without a rename: no intermediate revision.
    let (p, text) = (path.clone(), saved.clone());
    let fewest = fewest_policies_while(&c, move || {
        let mut f = std::fs::File::create(&p).unwrap();
        for chunk in text.as_bytes().chunks(text.len() / 40 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(30)); // the slow writer
        }
    })
    .await;
    assert_eq!(fewest, 5);
    source_idle(&c).await;
    assert_eq!(c.revision(), before, "no intermediate revisions");

    // Cut off after `- from:` (which alone would mean "from anywhere") and left open: the
    // allow-mysql rule never becomes "from anywhere".
    let cut = saved
        .find("name: allow-mysql")
        .map(|i| {
            let from = saved[i..].find("- from:").unwrap() + i;
            saved[..from + "- from:".len()].to_string()
        })
        .unwrap();
    let (p, text) = (path.clone(), cut);
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_secs(3)); // the writer stalls, file open
        f.write_all(b"\n").unwrap();
        f
    });
    let mut widened = false;
    while !writer.is_finished() {
        widened |= c.hub().lock().engine().policies().iter().any(|p| {
            &*p.key.name == "allow-mysql" && p.ingress.as_ref().unwrap()[0].peers.is_none()
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let f = writer.join().unwrap();
    assert!(!widened, "a half-written rule was never enforced");
    drop(f);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_kind_keeps_the_policy_and_is_reported() {
    let manifests = microservices();
    let saved = manifests[2].1.clone();
    let c = Cluster::start(&manifests, &["node-1"]).await;
    let before = c.revision();
    c.write(
        "20-policies.yaml",
        &saved.replacen("kind: NetworkPolicy", "kind: Networkpolicy", 1),
    );
    let conn = c.operator();
    let deadline = tokio::time::Instant::now() + WAIT;
    let report = loop {
        let r = palisadectl::remote::rejected(&conn, None, false)
            .await
            .unwrap()
            .text;
        if r.contains("Networkpolicy") {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "reported: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(report.contains("did you mean NetworkPolicy"), "{report}");
    assert_eq!(policies(&c), 5, "default-deny-all stays in force");
    assert_eq!(c.revision(), before);
    let metrics = c.http_get("/metrics").await;
    assert!(metrics.contains("palisade_rejected_objects 1"), "{metrics}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_refuses_writes_delays_changes_and_loses_none() {
    let manifests = microservices();
    let mut c = Cluster::start(&manifests, &["node-1"]).await;
    let before = c.revision();
    // The records directory replaced by a file: every record write fails, for real.
    let records = c.path("controller/source/files");
    std::fs::remove_dir_all(&records).unwrap();
    std::fs::write(&records, "").unwrap();
    let saved = manifests[2].1.clone();
    c.write(
        "20-policies.yaml",
        &saved.replace("port: 3306", "port: 3307"),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.source_health().failing.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failure is seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let readyz = c.http_get("/readyz").await;
    assert!(
        readyz.contains("503") && readyz.contains("cannot record"),
        "{readyz}"
    );
    assert!(c
        .http_get("/metrics")
        .await
        .contains("palisade_source_healthy 0"));
    assert_eq!(c.revision(), before, "nothing applied half-way");

    // The disk recovers: the change is applied, nothing was lost.
    std::fs::remove_file(&records).unwrap();
    std::fs::create_dir(&records).unwrap();
    let after = c.next_revision(before).await;
    assert!(after > before);
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.source_health().failing.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "recovers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.http_get("/readyz").await.contains("200 OK"));

    // And a restart while a file is broken keeps what the file held.
    c.stop_controller().await;
    std::fs::write(c.path("manifests/20-policies.yaml"), "kind: [").unwrap();
    c.restart_controller().await;
    assert_eq!(
        policies(&c),
        5,
        "the broken file's policies survive the restart"
    );
    c.shutdown().await;
}

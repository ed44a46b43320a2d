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
    c.state(|st| st.engine().policies().len())
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
        widened |= c.state(|st| {
            st.engine().policies().iter().any(|p| {
                &*p.key.name == "allow-mysql" && p.ingress.as_ref().unwrap()[0].peers.is_none()
            })
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

const EXTRA: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: NAME
  namespace: microservices
spec:
  podSelector:
    matchLabels:
      app: mysql
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: backend
    ports:
    - port: 3306
";

/// Whether the engine ever held policy `name` with a rule open to every peer or every port
/// (a half of `EXTRA`), and whether it holds it whole now.
fn extra_state(c: &Cluster, name: &str) -> (bool, bool) {
    let name = name.to_string();
    let Some(p) = c.state(move |st| {
        st.engine()
            .policies()
            .into_iter()
            .find(|p| *p.key.name == *name)
            .cloned()
    }) else {
        return (false, false);
    };
    let rules = p.ingress.clone().unwrap_or_default();
    let half = rules.iter().any(|r| r.peers.is_none() || r.ports.is_none());
    (half, !rules.is_empty() && !half)
}

/// A writer appending a policy a line at a time, closing the file after each (`echo line >>
/// f`): each close once counted as complete, and "from anywhere" was enforced. And a file
/// cut after `- from:` and held open while the controller restarts: once read at start-up
/// because it was older than --settle. Neither half is ever enforced now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_appended_line_by_line_or_open_across_a_restart_is_never_enforced_by_halves() {
    let hold = Duration::from_secs(2);
    let mut c = Cluster::start_with(&microservices(), &["node-1", "node-2"], move |config| {
        config.timing.hold = hold;
    })
    .await;
    let path = c.path("manifests/30-extra.yaml");
    let text = EXTRA.replace("NAME", "extra");
    let writer = std::thread::spawn(move || {
        for line in text.lines() {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            writeln!(f, "{line}").unwrap();
            drop(f); // closed after every line
            std::thread::sleep(Duration::from_millis(150)); // the writer's pace
        }
    });
    let mut widened = false;
    while !writer.is_finished() {
        widened |= extra_state(&c, "extra").0;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.join().unwrap();
    // Once quiet for the hold time, the whole policy is in force, and no half ever was.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (half, whole) = extra_state(&c, "extra");
        widened |= half;
        if whole {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the whole policy never applied"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!widened, "a half-written policy was enforced");

    // Cut after `- from:` and held open by its writer across a restart.
    let full = EXTRA.replace("NAME", "more");
    let cut = &full[..full.find("- from:").unwrap() + "- from:".len()];
    let mut f = std::fs::File::create(c.path("manifests/40-more.yaml")).unwrap();
    f.write_all(cut.as_bytes()).unwrap();
    f.flush().unwrap();
    c.stop_controller().await;
    // Older than --settle and the hold time when the controller comes back.
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    c.restart_controller().await;
    let restarted = tokio::time::Instant::now();
    let mut widened = false;
    // Watched for longer than the settle and hold times together: nothing of it applies.
    while restarted.elapsed() < hold * 2 + Duration::from_secs(1) {
        widened |= extra_state(&c, "more").0;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !widened,
        "the half held open was enforced after the restart"
    );
    assert!(c.source_health().waiting > 0, "the source says it waits");
    // The writer finishes and closes: the whole policy applies.
    f.write_all(&full.as_bytes()[cut.len()..]).unwrap();
    drop(f);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !extra_state(&c, "more").1 {
        assert!(!extra_state(&c, "more").0, "a half was enforced");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the whole policy never applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.shutdown().await;
}

/// A pod manifest of about `mib` MiB: its container's environment (read and validated, then
/// unused by Palisade) makes it slow to parse.
fn large_pod(name: &str, mib: usize) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: microservices\n  \
         labels: {{app: big}}\nspec:\n  nodeName: node-1\n  containers:\n  - name: c\n    \
         image: x\n    env:\n"
    );
    let mut i = 0;
    while s.len() < mib << 20 {
        s += &format!("    - {{name: E{i}, value: v}}\n");
        i += 1;
    }
    s
}

/// Written beside, then renamed into place (as a writer should).
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn has_pod(c: &Cluster, name: &str) -> bool {
    let name = name.to_string();
    c.state(move |st| st.engine().pods().iter().any(|p| *p.key.name == *name))
}

fn metric(c: &Cluster, line_start: &str) -> f64 {
    c.metric(line_start)
}

/// A 14 MB file once held every other change for 10–20 s, parsed again at each stat change
/// on the one scan thread. Now it is parsed beside the scan: a small change written after it
/// applies first, in a revision of its own; and touching it parses nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_holds_up_no_other_and_is_parsed_again_only_when_changed() {
    let c = Cluster::start(&microservices(), &["node-1", "node-2"]).await;
    let big = large_pod("big", 6);
    let started = std::time::Instant::now();
    write_atomically(&c.path("manifests/50-big.yaml"), &big);
    write_atomically(
        &c.path("manifests/30-extra.yaml"),
        &EXTRA.replace("NAME", "extra"),
    );
    let (mut extra_at, mut big_at) = (None, None);
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    while big_at.is_none() {
        let revision = c.revision();
        if extra_at.is_none() && extra_state(&c, "extra").1 {
            extra_at = Some(revision);
        }
        if has_pod(&c, "big") {
            big_at = Some(revision);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the large file never applied"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("large file applied after {:?}", started.elapsed());
    let extra_at = extra_at.expect("the small change applied before the large one");
    assert!(
        extra_at < big_at.unwrap(),
        "the small change waited for the large file (revisions {extra_at} and {big_at:?})"
    );
    source_idle(&c).await;

    // Touched: stat changes, the bytes do not; nothing is parsed again, nothing proposed.
    let parsed = metric(&c, "palisade_manifest_files_parsed_total");
    let revision = c.revision();
    for i in 1..=3 {
        let f = std::fs::File::options()
            .append(true)
            .open(c.path("manifests/50-big.yaml"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(i))
            .unwrap();
        drop(f);
    }
    write_atomically(
        &c.path("manifests/30-extra.yaml"),
        &EXTRA.replace("NAME", "extra").replace("3306", "3307"),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&c, "palisade_manifest_files_parsed_total") < parsed + 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no parse");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The parse is counted before its change is proposed and committed: wait for the commit.
    while c.revision() <= revision {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change never committed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    source_idle(&c).await;
    assert_eq!(
        metric(&c, "palisade_manifest_files_parsed_total"),
        parsed + 1.0,
        "only the changed file parsed"
    );
    assert_eq!(c.revision(), revision + 1, "one revision: the changed port");
    eprintln!("done after {:?}", started.elapsed());
    c.shutdown().await;
}

/// A link to `/` inside the directory once walked the whole filesystem and applied
/// manifests found anywhere on the machine. Links leading out are reported and not followed,
/// unless their target lies under a directory named by `--manifests-follow-links-to`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_leading_out_of_the_directory_are_followed_only_where_allowed() {
    let outside = tempfile::tempdir().unwrap();
    let (allowed, other) = (outside.path().join("allowed"), outside.path().join("other"));
    for (dir, name) in [(&allowed, "shared"), (&other, "stray")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            EXTRA.replace("NAME", name),
        )
        .unwrap();
    }
    let roots = vec![allowed.clone()];
    let c = Cluster::start_with(&microservices(), &["node-1", "node-2"], move |config| {
        config.manifest_link_roots = roots.clone();
    })
    .await;
    std::os::unix::fs::symlink("/", c.path("manifests/everything")).unwrap();
    std::os::unix::fs::symlink(other.join("stray.yaml"), c.path("manifests/stray.yaml")).unwrap();
    std::os::unix::fs::symlink(&allowed, c.path("manifests/shared")).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !extra_state(&c, "shared").1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the allowed link never followed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused: Vec<String> = c
        .reports()
        .rejected()
        .into_iter()
        .filter(|r| {
            r.errors
                .iter()
                .any(|e| e.contains("leading out of the manifests directory"))
        })
        .map(|r| r.source.clone())
        .collect();
    assert_eq!(refused, ["everything", "stray.yaml"], "reported");
    assert_eq!(extra_state(&c, "stray"), (false, false), "not followed");
    c.shutdown().await;
}

//! The source's decisions on real files, with time passed in.

use std::time::{Duration, Instant};

use super::*;

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n";
const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {nodeName: n1, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.0.1}\n";

fn kinds(cmds: &[Command]) -> Vec<&'static str> {
    cmds.iter().map(Command::kind).collect()
}

/// Scan and take the commands as applied.
fn apply(src: &mut ManifestDir, now: Instant) -> Scan {
    let scan = src.scan(now);
    src.persist().unwrap();
    src.commit();
    scan
}

fn immediate(dir: &Path) -> ManifestDir {
    ManifestDir::open(dir, Options::immediate()).unwrap()
}

const TIMING: Timing = Timing {
    settle: Duration::from_secs(1),
    hold: Duration::from_secs(10),
};

fn timed(dir: &Path, state: Option<&Path>) -> ManifestDir {
    let options = Options {
        timing: TIMING,
        state_dir: state.map(Path::to_path_buf),
        ..Options::immediate()
    };
    ManifestDir::open(dir, options).unwrap()
}

fn ingress_port(c: &Command) -> palisade_policy::model::PortRef {
    let Command::UpsertPolicy(p) = c else {
        panic!("{c:?}")
    };
    p.ingress.as_ref().unwrap()[0].ports.as_ref().unwrap()[0]
        .port
        .clone()
}

#[test]
fn edits_renames_and_deletes_become_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut src = immediate(dir);
    let now = Instant::now();
    std::fs::write(dir.join("pol.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("pod.yaml"), POD).unwrap();
    std::fs::write(dir.join(".pod.yaml.swp"), "garbage").unwrap();
    let s = apply(&mut src, now);
    assert_eq!(kinds(&s.commands), vec!["upsert-policy", "upsert-pod"]);
    assert!(apply(&mut src, now).commands.is_empty(), "nothing changed");

    // Atomic replace by rename, with a changed label.
    std::fs::write(dir.join(".tmp.part"), POD.replace("app: a", "app: b")).unwrap();
    std::fs::rename(dir.join(".tmp.part"), dir.join("pod.yaml")).unwrap();
    assert_eq!(kinds(&apply(&mut src, now).commands), vec!["upsert-pod"]);

    // Renaming a file to another name changes nothing.
    std::fs::rename(dir.join("pod.yaml"), dir.join("pods.yml")).unwrap();
    assert!(apply(&mut src, now).commands.is_empty());

    std::fs::remove_file(dir.join("pol.yaml")).unwrap();
    assert_eq!(kinds(&apply(&mut src, now).commands), vec!["delete-policy"]);
}

#[test]
fn namespace_labels_and_container_ports_are_changes_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut src = immediate(dir);
    let now = Instant::now();
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: red}}\n";
    std::fs::write(dir.join("ns.yaml"), ns).unwrap();
    std::fs::write(dir.join("pod.yaml"), POD).unwrap();
    apply(&mut src, now);
    std::fs::write(dir.join("ns.yaml"), ns.replace("red", "blue")).unwrap();
    assert_eq!(
        kinds(&apply(&mut src, now).commands),
        vec!["upsert-namespace"]
    );
    let with_port = POD.replace(
        "image: i}",
        "image: i, ports: [{name: http, containerPort: 8080}]}",
    );
    std::fs::write(dir.join("pod.yaml"), with_port).unwrap();
    assert_eq!(kinds(&apply(&mut src, now).commands), vec!["upsert-pod"]);
    std::fs::remove_file(dir.join("ns.yaml")).unwrap();
    assert_eq!(
        kinds(&apply(&mut src, now).commands),
        vec!["delete-namespace"]
    );
}

#[test]
fn invalid_edits_keep_the_last_valid_version() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut src = immediate(dir);
    let now = Instant::now();
    std::fs::write(dir.join("pol.yaml"), POLICY).unwrap();
    apply(&mut src, now);
    // Port 0 is invalid: rejected, the old policy stays, nothing is deleted.
    std::fs::write(dir.join("pol.yaml"), POLICY.replace("port: 80", "port: 0")).unwrap();
    let s = apply(&mut src, now);
    assert!(s.commands.is_empty(), "{:?}", s.commands);
    assert_eq!(s.rejected.len(), 1);
    assert_eq!(s.rejected[0].object, "x/p");
    // A syntax error keeps the whole file's objects.
    std::fs::write(dir.join("pol.yaml"), "apiVersion: [").unwrap();
    let s = apply(&mut src, now);
    assert!(s.commands.is_empty());
    assert_eq!(s.rejected.len(), 1);
    // Fixed again.
    std::fs::write(dir.join("pol.yaml"), POLICY.replace("port: 80", "port: 81")).unwrap();
    let s = apply(&mut src, now);
    assert_eq!(kinds(&s.commands), vec!["upsert-policy"]);
    assert!(s.rejected.is_empty());
}

#[test]
fn documents_that_cannot_be_identified_never_delete_what_they_were() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut src = immediate(dir);
    let now = Instant::now();
    let two = format!("{POLICY}---\n{}", POLICY.replace("name: p", "name: q"));
    std::fs::write(dir.join("pol.yaml"), &two).unwrap();
    assert_eq!(apply(&mut src, now).commands.len(), 2);
    let breakages = [
        two.replacen("kind: NetworkPolicy", "kind: Networkpolicy", 1),
        two.replacen("kind: NetworkPolicy\n", "", 1),
        two.replacen("apiVersion: networking.k8s.io/v1\n", "", 1),
        two.replacen("networking.k8s.io/v1", "networking.k8s.io/v2", 1),
        two.replacen("podSelector", "podSelecter", 1),
        two.replacen("ingress:", "ingres:", 1),
        two.replacen("port: 80", "port: [80]", 1),
    ];
    for broken in breakages {
        std::fs::write(dir.join("pol.yaml"), &broken).unwrap();
        let s = apply(&mut src, now);
        assert!(s.commands.is_empty(), "{broken}\n{:?}", s.commands);
        assert_eq!(s.rejected.len(), 1, "{broken}\n{:?}", s.rejected);
        assert!(
            s.warnings.iter().any(|w| w.contains("stay in force")),
            "{:?}",
            s.warnings
        );
    }
    // Restored: nothing to do; q removed for good: deleted.
    std::fs::write(dir.join("pol.yaml"), &two).unwrap();
    assert!(apply(&mut src, now).commands.is_empty());
    std::fs::write(dir.join("pol.yaml"), POLICY).unwrap();
    assert_eq!(kinds(&apply(&mut src, now).commands), vec!["delete-policy"]);
}

#[test]
fn a_type_error_keeps_the_object_of_the_chosen_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let options = Options {
        default_ns: "team-a".into(),
        ..Options::immediate()
    };
    let mut src = ManifestDir::open(dir, options).unwrap();
    let now = Instant::now();
    let policy = POLICY.replace("namespace: x", "");
    std::fs::write(dir.join("pol.yaml"), &policy).unwrap();
    assert_eq!(apply(&mut src, now).commands.len(), 1);
    std::fs::write(
        dir.join("pol.yaml"),
        policy.replace("port: 80", "port: [80]"),
    )
    .unwrap();
    let s = apply(&mut src, now);
    assert!(s.commands.is_empty(), "{:?}", s.commands);
    assert_eq!(s.rejected[0].object, "team-a/p");
}

#[test]
fn a_file_truncated_then_rewritten_in_place_never_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut src = timed(dir, None);
    let t0 = Instant::now();
    let path = dir.join("pol.yaml");
    std::fs::write(&path, POLICY).unwrap();
    // Just written, no sign of completion: read once quiet.
    let s = apply(&mut src, t0);
    assert!(s.commands.is_empty() && s.waiting == 1);
    assert_eq!(
        s.next,
        Some(s.next.unwrap()).filter(|n| *n <= t0 + TIMING.settle)
    );
    assert_eq!(apply(&mut src, t0 + TIMING.settle).commands.len(), 1);

    // `(sleep 2; cat saved.yaml) > pol.yaml`: empty for a while, then the same content.
    std::fs::write(&path, "").unwrap();
    let t1 = t0 + Duration::from_secs(5);
    assert!(apply(&mut src, t1).commands.is_empty(), "not quiet yet");
    let s = apply(&mut src, t1 + Duration::from_secs(2));
    assert!(s.commands.is_empty(), "emptied: removals are held");
    assert!(
        s.warnings.iter().any(|w| w.contains("without 1 object")),
        "{:?}",
        s.warnings
    );
    std::fs::write(&path, POLICY).unwrap();
    let t2 = t1 + Duration::from_secs(3);
    assert!(apply(&mut src, t2).commands.is_empty());
    let s = apply(&mut src, t2 + TIMING.settle);
    assert!(s.commands.is_empty(), "same content: nothing to do");
    assert_eq!(s.waiting, 0);

    // Emptied for good: deleted once it has stayed so.
    std::fs::write(&path, "").unwrap();
    let t3 = t2 + Duration::from_secs(20);
    assert!(apply(&mut src, t3).commands.is_empty());
    assert!(apply(&mut src, t3 + TIMING.settle).commands.is_empty());
    let s = apply(&mut src, t3 + TIMING.hold);
    assert_eq!(kinds(&s.commands), vec!["delete-policy"]);
}

#[test]
fn a_file_still_being_written_waits_for_its_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut src = timed(dir, None);
    let t0 = Instant::now();
    let path = dir.join("pol.yaml");
    std::fs::write(&path, POLICY).unwrap();
    src.hint(&src.root().join("pol.yaml"), Hint::Closed);
    assert_eq!(
        apply(&mut src, t0).commands.len(),
        1,
        "closed: read at once"
    );

    // Cut off mid-document ("- from:" then nothing would mean "from anywhere"), writer
    // still at work: not read, however quiet.
    std::fs::write(&path, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n").unwrap();
    src.hint(&src.root().join("pol.yaml"), Hint::Writing);
    for later in [5, 30, 600] {
        let s = apply(&mut src, t0 + Duration::from_secs(later));
        assert!(s.commands.is_empty(), "{later} s on, still not read");
        assert!(
            s.warnings.iter().any(|w| w.contains("being written")),
            "{:?}",
            s.warnings
        );
    }
    // The writer finishes and closes it. Port 8080 was not allowed before: a change that
    // allows more, made in place, applies once the file has stayed so for the hold time.
    std::fs::write(&path, POLICY.replace("port: 80", "port: 8080")).unwrap();
    src.hint(&src.root().join("pol.yaml"), Hint::Closed);
    let s = apply(&mut src, t0 + Duration::from_secs(601));
    assert!(s.commands.is_empty());
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("allowing more through")),
        "{:?}",
        s.warnings
    );
    let s = apply(&mut src, t0 + Duration::from_secs(601) + TIMING.hold);
    assert_eq!(
        ingress_port(&s.commands[0]),
        palisade_policy::model::PortRef::Range(8080, 8080)
    );
}

#[test]
fn a_rename_into_place_applies_removals_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut src = timed(dir, None);
    let t0 = Instant::now();
    let path = dir.join("pol.yaml");
    std::fs::write(&path, format!("{POLICY}---\n{POD}")).unwrap();
    apply(&mut src, t0);
    assert_eq!(apply(&mut src, t0 + TIMING.settle).commands.len(), 2);
    std::fs::write(dir.join(".new"), POLICY).unwrap();
    std::fs::rename(dir.join(".new"), &path).unwrap();
    src.hint(&src.root().join("pol.yaml"), Hint::Renamed);
    let s = apply(&mut src, t0 + TIMING.settle);
    assert_eq!(kinds(&s.commands), vec!["delete-pod"]);
}

#[test]
fn an_object_in_two_files_is_a_conflict_and_the_version_in_force_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut src = immediate(dir);
    let now = Instant::now();
    std::fs::write(dir.join("b.yaml"), POLICY).unwrap();
    assert_eq!(apply(&mut src, now).commands.len(), 1);
    // A copy that opens it to everyone, in a file that sorts first: it does not win.
    let open = POLICY.replace("ingress: [{ports: [{port: 80}]}]", "ingress: [{}]");
    std::fs::write(dir.join("a.yaml"), &open).unwrap();
    let s = apply(&mut src, now);
    assert!(s.commands.is_empty(), "{:?}", s.commands);
    let conflict = s
        .rejected
        .iter()
        .find(|r| r.source == "a.yaml, b.yaml")
        .expect("the conflict is reported");
    assert!(
        conflict.errors[0].contains("from b.yaml stays"),
        "{conflict:?}"
    );
    // Still reported at every scan, not only once.
    assert_eq!(apply(&mut src, now).rejected.len(), 1);
    // The original goes: the copy is the only definition, and applies.
    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    let s = apply(&mut src, now);
    assert_eq!(kinds(&s.commands), vec!["upsert-policy"]);
    assert!(s.rejected.is_empty());
}

/// While running, the version in force stays when a second file defines the same object;
/// after a restart the first file by path once won instead (the winner was never recorded
/// when the conflict began without a change of winner).
#[test]
fn the_winner_of_a_conflict_stays_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let t0 = Instant::now();
    std::fs::write(dir.join("b.yaml"), POLICY).unwrap();
    let mut src = timed(dir, Some(state.path()));
    apply(&mut src, t0);
    assert_eq!(apply(&mut src, t0 + TIMING.settle).commands.len(), 1);
    let open = POLICY.replace("ingress: [{ports: [{port: 80}]}]", "ingress: [{}]");
    std::fs::write(dir.join("a.yaml"), &open).unwrap();
    // (A new file in place: read once quiet for the hold time.)
    let t1 = t0 + Duration::from_secs(5);
    apply(&mut src, t1);
    let s = apply(&mut src, t1 + TIMING.hold);
    assert!(s.commands.is_empty(), "{:?}", s.commands);
    assert_eq!(s.rejected.len(), 1, "the conflict is reported");
    drop(src);

    let mut src = timed(dir, Some(state.path()));
    let t2 = t1 + Duration::from_secs(15);
    // (No engine here: the restarted source proposes the version in force again.)
    for t in [t2, t2 + TIMING.settle, t2 + TIMING.hold] {
        let s = apply(&mut src, t);
        for c in &s.commands {
            assert_eq!(
                ingress_port(c),
                palisade_policy::model::PortRef::Range(80, 80),
                "b.yaml's version stays after the restart: {c:?}"
            );
        }
    }
}

#[test]
fn a_first_start_takes_the_first_file_of_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("a.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("b.yaml"), POLICY.replace("port: 80", "port: 81")).unwrap();
    let s = apply(&mut immediate(dir), Instant::now());
    assert_eq!(
        ingress_port(&s.commands[0]),
        palisade_policy::model::PortRef::Range(80, 80)
    );
}

#[test]
fn what_a_file_held_survives_a_restart_while_it_is_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let t0 = Instant::now();
    std::fs::write(dir.join("pol.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("pod.yaml"), POD).unwrap();
    let mut src = timed(dir, Some(state.path()));
    apply(&mut src, t0);
    assert_eq!(apply(&mut src, t0 + TIMING.settle).commands.len(), 2);
    drop(src);

    // While the controller is down, the policy file breaks and the pod file is deleted.
    std::fs::write(
        dir.join("pol.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: [",
    )
    .unwrap();
    std::fs::remove_file(dir.join("pod.yaml")).unwrap();
    let mut src = timed(dir, Some(state.path()));
    assert!(src.has_records());
    let s = apply(&mut src, t0);
    assert_eq!(
        kinds(&s.commands),
        vec!["upsert-policy"],
        "the policy stays"
    );
    assert_eq!(s.waiting, 1, "the broken file is read once quiet");
    let s = apply(&mut src, t0 + TIMING.settle);
    assert!(s.commands.is_empty(), "{:?}", s.commands);
    assert_eq!(s.rejected.len(), 1);

    // Also across a restart while a file is being rewritten (not yet complete).
    std::fs::write(dir.join("pol.yaml"), "").unwrap();
    drop(src);
    let mut src = timed(dir, Some(state.path()));
    let s = apply(&mut src, Instant::now());
    assert_eq!(kinds(&s.commands), vec!["upsert-policy"]);
}

#[test]
fn a_failure_to_record_is_retried_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = Instant::now();
    let options = Options {
        state_dir: Some(state.path().to_path_buf()),
        ..Options::immediate()
    };
    let mut src = ManifestDir::open(dir, options).unwrap();
    std::fs::write(dir.join("pol.yaml"), POLICY).unwrap();
    // The records directory replaced by a file: writing a record fails for real.
    let files = state.path().join("source/files");
    std::fs::remove_dir(&files).unwrap();
    std::fs::write(&files, "").unwrap();
    let s = src.scan(now);
    assert_eq!(s.commands.len(), 1);
    assert!(src.persist().is_err());
    // Not committed: the same change is proposed again.
    let s = src.scan(now);
    assert_eq!(kinds(&s.commands), vec!["upsert-policy"]);
    std::fs::remove_file(&files).unwrap();
    std::fs::create_dir(&files).unwrap();
    src.persist().unwrap();
    src.commit();
    assert!(src.scan(now).commands.is_empty());
}

#[test]
fn bad_paths_are_reported_alone_and_keep_what_they_held() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let options = Options {
        limits: Limits {
            max_bytes: 4096,
            max_depth: 16,
        },
        ..Options::immediate()
    };
    let mut src = ManifestDir::open(dir, options).unwrap();
    let now = Instant::now();
    std::fs::write(dir.join("pol.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("pod.yaml"), POD).unwrap();
    assert_eq!(apply(&mut src, now).commands.len(), 2);
    // Links back to the directory, a FIFO, a link to /dev/zero, a huge file, a deep file.
    std::os::unix::fs::symlink(".", dir.join("loop1")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("loop2")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("p.yaml").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::write(dir.join("big.yaml"), "a: b\n".repeat(2000)).unwrap();
    std::fs::write(
        dir.join("deep.yaml"),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .unwrap();
    // And the policy file replaced by a link to /dev/zero: its policy stays.
    std::fs::remove_file(dir.join("pol.yaml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("pol.yaml")).unwrap();
    // Meanwhile an ordinary edit goes through.
    std::fs::write(dir.join("pod.yaml"), POD.replace("app: a", "app: b")).unwrap();
    let s = apply(&mut src, now);
    assert_eq!(kinds(&s.commands), vec!["upsert-pod"]);
    let sources: Vec<&str> = s.rejected.iter().map(|r| r.source.as_str()).collect();
    for bad in ["loop1", "loop2", "p.yaml", "pol.yaml"] {
        assert!(sources.contains(&bad), "{bad} in {sources:?}");
    }
    assert!(
        s.rejected
            .iter()
            .any(|r| r.source == "big.yaml" && r.errors[0].contains("limit")),
        "{:?}",
        s.rejected
    );
    assert!(
        s.rejected.iter().any(|r| r.source.starts_with("deep.yaml")),
        "{:?}",
        s.rejected
    );
}

#[test]
fn files_under_a_directory_that_cannot_be_listed_keep_their_objects() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(dir.join("team")).unwrap();
    std::fs::write(dir.join("team/pol.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("pod.yaml"), POD).unwrap();
    let mut src = immediate(&dir);
    assert_eq!(apply(&mut src, Instant::now()).commands.len(), 2);
    std::fs::set_permissions(dir.join("team"), std::fs::Permissions::from_mode(0o000)).unwrap();
    // As root permissions do not apply: scan from a thread whose file-system identity is an
    // unprivileged user (setfsuid is per thread and drops the DAC override).
    let (src, s) = std::thread::spawn(move || {
        unsafe { libc::setfsuid(65534) };
        let s = apply(&mut src, Instant::now());
        unsafe { libc::setfsuid(0) };
        (src, s)
    })
    .join()
    .unwrap();
    assert!(s.commands.is_empty(), "nothing deleted: {:?}", s.commands);
    assert!(
        s.rejected
            .iter()
            .any(|r| r.source == "team" && r.errors[0].contains("stays in force")),
        "{:?}",
        s.rejected
    );
    drop(src);
    std::fs::set_permissions(dir.join("team"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A new leader's first load, with the file defining a replicated policy still being parsed
/// when the scan stops waiting: the policy is never deleted meanwhile (a file not read yet in
/// this run may define it), and once parsed, it stays as it was.
#[test]
fn nothing_is_deleted_while_a_file_not_read_yet_is_being_parsed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The policy, then a pod whose environment makes the file slow to parse.
    let mut text = format!(
        "{POLICY}---\n{}",
        POD.replace(
            "containers: [{name: c, image: i}]",
            "containers: [{name: c, image: i, env: [ENV]}]"
        )
    );
    let env: Vec<String> = (0..40_000)
        .map(|i| format!("{{name: E{i}, value: v}}"))
        .collect();
    text = text.replace("ENV", &env.join(", "));
    std::fs::write(dir.join("all.yaml"), &text).unwrap();
    let policy = file::parse("all.yaml", &text, &Limits::default(), "default")
        .objects
        .into_iter()
        .find(|(k, _)| k.0 == palisade_policy::k8s::Kind::NetworkPolicy)
        .expect("the policy");
    let options = Options {
        patience: Duration::ZERO,
        ..Options::immediate()
    };
    let mut src = ManifestDir::open(dir, options).unwrap();
    src.reconcile(BTreeMap::from([policy]));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut waited = false;
    loop {
        let scan = apply(&mut src, Instant::now());
        assert!(
            !kinds(&scan.commands).contains(&"delete-policy"),
            "{:?}",
            kinds(&scan.commands)
        );
        if kinds(&scan.commands).contains(&"upsert-pod") {
            break;
        }
        waited |= scan.waiting == 1;
        assert!(Instant::now() < deadline, "the file is never taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        waited,
        "the file was still being parsed after the first scan, and said so"
    );
}

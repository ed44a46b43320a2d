use super::*;
use k8s_openapi::api::core::v1 as core;
use palisade_policy::k8s;

fn ns(name: &str, team: &str) -> Received {
    let mut n = core::Namespace::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some([("team".to_string(), team.to_string())].into());
    k8s::namespace(&n).map(Object::Namespace).into()
}

fn pod(name: &str, ip: &str, condition: &str) -> Received {
    let mut p = core::Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("a".into());
    p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    p.metadata.annotations = Some([("note".to_string(), condition.to_string())].into());
    p.spec = Some(core::PodSpec {
        node_name: Some("n1".into()),
        ..Default::default()
    });
    p.status = Some(core::PodStatus {
        pod_ip: Some(ip.into()),
        phase: Some("Running".into()),
        conditions: Some(vec![core::PodCondition {
            type_: "Ready".into(),
            status: condition.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    k8s::pod(&p, "default").map(Object::Pod).into()
}

fn list_all(m: &mut Mirror, namespaces: &[(&str, Received)], pods: &[(&str, Received)]) {
    for kind in KINDS {
        m.list_started(kind);
    }
    for (n, o) in namespaces {
        m.listed(Kind::Namespace, n.to_string(), o.clone());
    }
    for (n, o) in pods {
        m.listed(Kind::Pod, n.to_string(), o.clone());
    }
    for kind in KINDS {
        m.list_done(kind);
    }
}

/// The replicated state holding `objects`.
fn state<const N: usize>(objects: [Received; N]) -> BTreeMap<Key, Object> {
    objects
        .into_iter()
        .map(|o| o.unwrap())
        .map(|o| (o.key(), o))
        .collect()
}

fn kinds(batch: &[Command]) -> Vec<&'static str> {
    batch.iter().map(Command::kind).collect()
}

#[test]
fn nothing_is_proposed_until_every_kind_is_listed_then_one_batch_holds_them() {
    let mut m = Mirror::new(BTreeMap::new());
    m.list_started(Kind::Namespace);
    m.listed(Kind::Namespace, "a".into(), ns("a", "x"));
    m.list_done(Kind::Namespace);
    m.list_started(Kind::Pod);
    m.listed(Kind::Pod, "a/p".into(), pod("p", "10.0.0.1", "True"));
    assert!(m.batch().is_none(), "pods and policies not listed yet");
    m.list_done(Kind::Pod);
    m.list_started(Kind::NetworkPolicy);
    m.list_done(Kind::NetworkPolicy);
    let batch = m.batch().expect("one batch");
    assert_eq!(batch.len(), 2);
    assert!(m.batch().is_none(), "one batch in flight at a time");
    m.committed(BTreeMap::new());
    assert!(m.batch().is_none(), "nothing left");
}

#[test]
fn a_status_only_update_proposes_nothing() {
    let mut m = Mirror::new(BTreeMap::new());
    list_all(
        &mut m,
        &[("a", ns("a", "x"))],
        &[("a/p", pod("p", "10.0.0.1", "True"))],
    );
    m.batch().expect("initial");
    m.committed(BTreeMap::new());
    let effect = m.apply(Kind::Pod, "a/p".into(), pod("p", "10.0.0.1", "False"));
    assert_eq!(effect, Effect::Ignored);
    assert!(m.batch().is_none());
    assert_eq!(
        m.apply(Kind::Pod, "a/p".into(), pod("p", "10.0.0.2", "False")),
        Effect::Changed
    );
    assert_eq!(kinds(&m.batch().expect("the new address")), ["upsert-pod"]);
}

#[test]
fn a_relist_deletes_what_vanished_and_nothing_else() {
    let applied = state([
        ns("a", "x"),
        ns("b", "y"),
        pod("p", "10.0.0.1", "True"),
        pod("q", "10.0.0.2", "True"),
    ]);
    // A new leader (or a relist after 410): the list is compared with the replicated state.
    let mut m = Mirror::new(applied);
    list_all(
        &mut m,
        &[("a", ns("a", "x"))],
        &[("a/p", pod("p", "10.0.0.1", "False"))],
    );
    let batch = m.batch().expect("the deletes");
    assert_eq!(kinds(&batch), ["delete-pod", "delete-namespace"]);
    m.committed(BTreeMap::new());
    // A relist of pods only, with the same content: nothing.
    m.list_started(Kind::Pod);
    m.listed(Kind::Pod, "a/p".into(), pod("p", "10.0.0.1", "True"));
    assert_eq!(m.list_done(Kind::Pod), (0, 0));
    assert!(m.batch().is_none());
}

#[test]
fn a_list_that_breaks_half_way_is_void() {
    let applied: BTreeMap<Key, Object> = [ns("a", "x").unwrap(), ns("b", "x").unwrap()]
        .into_iter()
        .map(|o| (o.key(), o))
        .collect();
    let mut m = Mirror::new(applied);
    list_all(&mut m, &[("a", ns("a", "x")), ("b", ns("b", "x"))], &[]);
    assert!(m.batch().is_none());
    // The relist begins, gives one namespace, breaks, and begins again: complete this time.
    m.list_started(Kind::Namespace);
    m.listed(Kind::Namespace, "a".into(), ns("a", "x"));
    m.list_started(Kind::Namespace);
    assert!(m.batch().is_none(), "nothing from a partial list");
    m.listed(Kind::Namespace, "a".into(), ns("a", "x"));
    m.listed(Kind::Namespace, "b".into(), ns("b", "x"));
    m.list_done(Kind::Namespace);
    assert!(m.batch().is_none(), "the complete list holds both");
}

#[test]
fn a_rejected_update_keeps_the_last_valid_version() {
    let mut m = Mirror::new(BTreeMap::new());
    list_all(&mut m, &[("a", ns("a", "x"))], &[]);
    m.batch().expect("initial");
    m.committed(BTreeMap::new());
    let bad = ns("a", "not a label value!");
    assert!(bad.object.is_err());
    assert_eq!(
        m.apply(Kind::Namespace, "a".into(), bad.clone()),
        Effect::Rejected
    );
    assert!(m.batch().is_none(), "the valid version stays");
    assert_eq!(m.rejected().count(), 1);
    // Also when a relist finds it still invalid: kept, not deleted.
    m.list_started(Kind::Namespace);
    m.listed(Kind::Namespace, "a".into(), bad);
    m.list_done(Kind::Namespace);
    assert!(m.batch().is_none());
    assert_eq!(m.count(Kind::Namespace), 1);
    // Fixed: the new version goes in, the rejection is gone.
    assert_eq!(
        m.apply(Kind::Namespace, "a".into(), ns("a", "z")),
        Effect::Changed
    );
    assert_eq!(m.rejected().count(), 0);
    assert_eq!(kinds(&m.batch().expect("the fix")), ["upsert-namespace"]);
}

#[test]
fn a_batch_takes_the_objects_and_keeps_only_their_prints() {
    let mut m = Mirror::new(BTreeMap::new());
    list_all(
        &mut m,
        &[("a", ns("a", "x"))],
        &[("a/p", pod("p", "10.0.0.1", "True"))],
    );
    assert_eq!(m.objects.len(), 2);
    let batch = m.batch().expect("initial");
    assert!(m.objects.is_empty(), "moved into the commands");
    assert_eq!(batch.len(), 2);
    m.committed(BTreeMap::new());
    // Compared by print: the same content again is nothing; a delete needs only the key.
    assert_eq!(
        m.apply(Kind::Namespace, "a".into(), ns("a", "x")),
        Effect::Ignored
    );
    m.delete(Kind::Pod, "a/p".into());
    let batch = m.batch().expect("the delete");
    assert!(
        matches!(&batch[..], [Command::DeletePod(k)] if k.to_string() == "a/p"),
        "{batch:?}"
    );
}

#[test]
fn a_new_mirror_over_the_replicated_state_proposes_only_the_difference() {
    // What a failed proposal leads to: the source starts over from the replicated state.
    let held = ns("a", "x").unwrap();
    let mut m = Mirror::new([(held.key(), held)].into());
    list_all(&mut m, &[("a", ns("a", "x")), ("b", ns("b", "y"))], &[]);
    assert_eq!(
        kinds(&m.batch().expect("the new one")),
        ["upsert-namespace"]
    );
}

#[test]
fn a_delete_then_recreate_before_the_batch_proposes_only_the_difference() {
    let mut m = Mirror::new(BTreeMap::new());
    list_all(&mut m, &[("a", ns("a", "x"))], &[]);
    m.batch().expect("initial");
    m.committed(BTreeMap::new());
    m.delete(Kind::Namespace, "a".into());
    m.apply(Kind::Namespace, "a".into(), ns("a", "x"));
    assert!(m.batch().is_none(), "coalesced to nothing");
}

#[test]
fn a_change_undone_while_the_batch_is_in_flight_is_proposed_back() {
    let mut m = Mirror::new(BTreeMap::new());
    list_all(&mut m, &[("a", ns("a", "x"))], &[]);
    m.batch().expect("initial");
    m.committed(BTreeMap::new());
    m.apply(Kind::Namespace, "a".into(), ns("a", "wide-open"));
    m.batch().expect("the change, in flight");
    // Undone before it commits: once it has, the original must be proposed again.
    m.apply(Kind::Namespace, "a".into(), ns("a", "x"));
    m.committed(BTreeMap::new());
    let batch = m.batch().expect("the undo");
    assert!(
        matches!(&batch[..], [Command::UpsertNamespace(n)] if n.labels.get("team").map(String::as_str) == Some("x")),
        "{batch:?}"
    );
}

#[test]
fn pod_deletes_go_first_policy_and_namespace_deletes_last() {
    let applied = state([ns("old", "x"), pod("p", "10.0.0.1", "True")]);
    let mut m = Mirror::new(applied);
    list_all(
        &mut m,
        &[("a", ns("a", "x"))],
        &[("a/q", pod("q", "10.0.0.1", "True"))],
    );
    let batch = m.batch().expect("the changes");
    assert_eq!(
        kinds(&batch),
        [
            "delete-pod",
            "upsert-namespace",
            "upsert-pod",
            "delete-namespace"
        ],
        "the old pod's address is free before the new pod takes it"
    );
}

#[test]
fn a_list_end_without_its_beginning_changes_nothing() {
    let held = ns("a", "x").unwrap();
    let mut m = Mirror::new([(held.key(), held)].into());
    assert_eq!(m.list_done(Kind::Namespace), (0, 0));
    assert!(!m.synced_kind(Kind::Namespace));
    assert_eq!(m.count(Kind::Namespace), 1);
}

#[test]
fn objects_another_source_holds_are_parked_not_recorded_as_applied() {
    let mut m = Mirror::new(BTreeMap::new());
    list_all(&mut m, &[("a", ns("a", "x")), ("b", ns("b", "y"))], &[]);
    m.batch().expect("initial");
    let before = m.generation();
    m.committed([((Kind::Namespace, "b".to_string()), "manifests".to_string())].into());
    assert_eq!(m.parked().len(), 1);
    assert!(m.generation() > before, "shown again");
    // b is still not applied from here: a new mirror over the replicated state (without b)
    // would propose it again, which is what the source does once b is free.
    assert!(m.batch().is_none());
    // Its changes, and a relist, propose nothing while it is parked: each would be refused.
    m.apply(Kind::Namespace, "b".into(), ns("b", "z"));
    assert!(
        m.batch().is_none(),
        "a parked object's change is not proposed"
    );
    list_all(&mut m, &[("a", ns("a", "x")), ("b", ns("b", "w"))], &[]);
    assert!(m.batch().is_none(), "nor after a relist");
    m.apply(Kind::Namespace, "a".into(), ns("a", "v"));
    let batch = m.batch().expect("a's change");
    assert_eq!(kinds(&batch), ["upsert-namespace"]);
}

#[test]
fn unknown_fields_are_shown_while_the_version_holding_them_is_in_force() {
    let mut m = Mirror::new(BTreeMap::new());
    let mut with = ns("a", "x");
    with.unknown = vec![k8s::FieldError {
        field: "spec.future".into(),
        reason: "ignored".into(),
    }];
    list_all(&mut m, &[("a", with.clone())], &[]);
    let g = m.generation();
    assert_eq!(m.unknown().count(), 1);
    // The same again (a relist): nothing changes.
    assert_eq!(m.apply(Kind::Namespace, "a".into(), with), Effect::Ignored);
    assert_eq!(m.generation(), g);
    // A version without it: no longer shown.
    m.apply(Kind::Namespace, "a".into(), ns("a", "x"));
    assert_eq!(m.unknown().count(), 0);
    assert!(m.generation() > g);
    // Deleted: gone too.
    let mut with = ns("a", "y");
    with.unknown = vec![k8s::FieldError {
        field: "spec.future".into(),
        reason: "ignored".into(),
    }];
    m.apply(Kind::Namespace, "a".into(), with);
    assert_eq!(m.unknown().count(), 1);
    m.delete(Kind::Namespace, "a".into());
    assert_eq!(m.unknown().count(), 0);
}

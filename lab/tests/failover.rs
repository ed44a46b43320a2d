//! The quick start's failover on real packets: three controller replicas, the seed chain, the
//! leader SIGKILLed while an allowed and a denied flow are probed without pause. Enforcement
//! never lapses, a new leader takes over, and the agents of the killed replica resume on the
//! others without a snapshot.

#[path = "support.rs"]
mod support;

use palisade_lab::LabOptions;

const NS: &str = include_str!("../../examples/microservices/00-namespace.yaml");
const PODS: &str = include_str!("../../examples/microservices/10-pods.yaml");
const POLICIES: &str = include_str!("../../examples/microservices/20-policies.yaml");

#[test]
fn killing_the_leader_never_lapses_enforcement_and_agents_resume_elsewhere() {
    let files = [
        ("00-namespace.yaml", NS),
        ("10-pods.yaml", PODS),
        ("20-policies.yaml", POLICIES),
    ];
    let owned: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    let opts = LabOptions {
        replicas: 3,
        extra_nodes: palisade_lab::failover::standbys(&owned, 3).unwrap(),
        ..LabOptions::beside_executable()
    };
    let mut lab = support::lab_with(&files, opts);
    let flows = lab.all_flows(&palisade_lab::demo::MICROSERVICES_PROBES);
    let predicted = lab.predicted(&flows).unwrap();
    let (allowed, denied) = palisade_lab::failover::pick(&flows, &predicted).unwrap();
    let f = palisade_lab::failover::run(&mut lab, &allowed, &denied).unwrap();
    assert_eq!(f.lapses, 0, "{}", f.report);
    assert_eq!(f.snapshots, 0, "{}", f.report);
    assert!(f.report.contains("leads after"), "{}", f.report);
    assert_eq!(lab.controllers_alive().len(), 2);
}

//! `deploy/` renders with `kubectl kustomize` and validates offline against the Kubernetes
//! schemas of the oldest and newest minor versions supported, and every flag the manifests
//! pass exists in the binaries' `--help` (deploy/check.py; needs scripts/setup.sh's
//! kubernetes-validate and kubectl).

use std::path::Path;
use std::process::Command;

use palisade_lab::lab::LabOptions;

#[test]
fn the_manifests_validate_and_pass_only_flags_the_binaries_have() {
    let bins = LabOptions::beside_executable().bin_dir;
    let bin = |name: &str| {
        let path = bins.join(name);
        assert!(
            path.exists(),
            "{} is not built: run `cargo build --workspace` (cargo test --workspace builds it)",
            path.display()
        );
        path
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("deploy/check.py"))
        .arg("--controller-bin")
        .arg(bin("palisade-controller"))
        .arg("--agent-bin")
        .arg(bin("palisade-agent"))
        .arg("--palisadectl-bin")
        .arg(bin("palisadectl"))
        .output()
        .expect("running python3 deploy/check.py");
    assert!(
        out.status.success(),
        "deploy/check.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

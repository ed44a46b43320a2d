//! What the crate's unit tests share: batches of commands from YAML, as a source proposes
//! them, and a small cluster to apply.

use palisade_replica::{Batch, ProposalId};

/// A namespace `shop` whose policy isolates every pod for ingress (peers: the namespace's
/// own pods), and pod `shop/a` on node `n1` at 10.0.0.1.
pub const SHOP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec: {podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: shop}\nspec: {nodeName: n1, containers: [{name: c, image: c}]}\nstatus: {podIP: 10.0.0.1}\n";

/// Pod `shop/<name>` on node `node` at `ip`.
pub fn pod(name: &str, node: &str, ip: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {ip}}}\n")
}

/// The objects `text` holds, upserted, as one batch of source `test`.
pub fn batch(text: &str) -> Batch {
    Batch {
        id: ProposalId {
            replica: 1,
            term: 1,
            seq: 1,
        },
        owner: "test".into(),
        commands: palisade_policy::manifest::parse("t.yaml", text, "default")
            .upserts()
            .expect("valid manifests"),
    }
}

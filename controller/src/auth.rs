//! Who is calling, from the client certificate of the mTLS connection, and what they may do
//! (contracts.md §10): a node's agent may sync only its own node's slice; introspection
//! needs an operator certificate. With `--insecure` (plaintext) nobody is identified and
//! everything is allowed.

use palisade_proto::identity;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Node(String),
    Operator(String),
    Controller,
    /// Controller replica N of the Raft group.
    Replica(u64),
    /// Plaintext development mode: no identity, no checks.
    Anonymous,
}

/// Identities named by the URI SANs of a DER certificate.
pub fn identities(der: &[u8]) -> Result<Vec<Identity>, String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?;
    let mut out = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            if let Some(node) = uri.strip_prefix(identity::NODE) {
                out.push(Identity::Node(node.to_string()));
            } else if let Some(op) = uri.strip_prefix(identity::OPERATOR) {
                out.push(Identity::Operator(op.to_string()));
            } else if let Some(n) = uri.strip_prefix(identity::REPLICA) {
                if let Ok(n) = n.parse() {
                    out.push(Identity::Replica(n));
                }
            } else if *uri == identity::CONTROLLER {
                out.push(Identity::Controller);
            }
        }
    }
    Ok(out)
}

/// The caller's identities (empty when its certificate names none).
pub fn caller<T>(req: &Request<T>, insecure: bool) -> Result<Vec<Identity>, Status> {
    if insecure {
        return Ok(vec![Identity::Anonymous]);
    }
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    identities(leaf.as_ref()).map_err(Status::unauthenticated)
}

/// May these identities sync node `node`?
pub fn authorize_node(ids: &[Identity], node: &str) -> Result<(), Status> {
    let ok = ids.iter().any(|i| match i {
        Identity::Anonymous => true,
        Identity::Node(n) => n == node,
        _ => false,
    });
    if ok {
        return Ok(());
    }
    let named: Vec<String> = ids
        .iter()
        .filter_map(|i| match i {
            Identity::Node(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    Err(Status::permission_denied(if named.is_empty() {
        format!(
            "the client certificate names no node (expected a URI SAN {})",
            identity::node_uri(node)
        )
    } else {
        format!(
            "the client certificate is for node {}, not {node}",
            named.join(", ")
        )
    }))
}

/// Interceptor for services that need an operator certificate.
#[derive(Clone)]
pub struct RequireOperator {
    pub insecure: bool,
}

impl tonic::service::Interceptor for RequireOperator {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let ids = caller(&req, self.insecure)?;
        if ids
            .iter()
            .any(|i| matches!(i, Identity::Operator(_) | Identity::Anonymous))
        {
            Ok(req)
        } else {
            Err(Status::permission_denied(format!(
                "introspection needs an operator certificate (a URI SAN {}NAME)",
                identity::OPERATOR
            )))
        }
    }
}

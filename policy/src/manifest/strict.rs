//! Typed decoding with the API server's strict field validation: a field the Kubernetes type
//! does not have (`podSelecter`, `ingres`) is an error naming its path, not silently dropped
//! (a dropped `podSelecter` would leave an empty selector: every pod of the namespace).

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A field path as the API server writes it: `spec.ingress[0].from[1].podSelecter`.
fn path(p: &serde_ignored::Path<'_>) -> String {
    crate::k8s::unknown::field_path(p).to_string()
}

/// What went wrong decoding one object.
pub(super) enum Failure {
    /// A value of the wrong type (or a missing required field) at `field`.
    Type { field: String, message: String },
    /// Fields the type does not have.
    Unknown(Vec<String>),
}

/// Decode `value` as `T`, rejecting unknown fields.
pub(super) fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, Failure> {
    let mut unknown = Vec::new();
    let mut note = |p: serde_ignored::Path<'_>| unknown.push(path(&p));
    let de = serde_ignored::Deserializer::new(value, &mut note);
    let typed: T = serde_path_to_error::deserialize(de).map_err(|e| Failure::Type {
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })?;
    if unknown.is_empty() {
        Ok(typed)
    } else {
        Err(Failure::Unknown(unknown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    #[test]
    fn unknown_fields_are_named_by_path() {
        let v: Value = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "x", "labels": {"free": "form"}},
            "spec": {"podSelecter": {}, "ingress": [{"from": [{"podSelector": {}, "nameSpaceSelector": {}}]}]}
        });
        let Err(Failure::Unknown(fields)) = decode::<NetworkPolicy>(&v) else {
            panic!("accepted")
        };
        assert_eq!(
            fields,
            vec![
                "spec.ingress[0].from[0].nameSpaceSelector",
                "spec.podSelecter"
            ]
        );
        let ok: Value = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "x", "creationTimestamp": null},
            "spec": {"podSelector": {"matchLabels": {"a": "b"}}, "policyTypes": ["Ingress"]}
        });
        assert!(decode::<NetworkPolicy>(&ok).is_ok());
    }
}

//! `palisadectl rejected`: the objects the controller's sources could not take (or took
//! narrowed), then the lint findings over its replicated state.

use super::*;

/// What `rejected` found: the text, and how many objects were rejected, how many are in force
/// narrowed (fields Palisade's schema lacks) and how many lint findings there are.
pub struct RejectedReport {
    pub text: String,
    pub rejected: usize,
    pub narrowed: usize,
    pub findings: usize,
}

/// Objects the controller rejected, then lint findings over its replicated state.
/// Only those of `namespace` when given (`-n`).
pub async fn rejected(
    conn: &Conn,
    namespace: Option<&str>,
    json_out: bool,
) -> Result<RejectedReport, RemoteError> {
    let mut r = client(conn)
        .await?
        .list_rejected(pb::ListRejectedRequest {})
        .await?
        .into_inner();
    let (all_objects, all_findings) = (r.objects.len(), r.findings.len());
    if let Some(ns) = namespace {
        // A problem that names no object (a file that does not parse, a document that cannot
        // be identified) may hide this namespace's objects: always shown.
        r.objects
            .retain(|o| o.object.is_empty() || in_namespace(&o.object, ns));
        r.findings.retain(|f| in_namespace(&f.object, ns));
    }
    let left_out = (
        all_objects - r.objects.len(),
        all_findings - r.findings.len(),
    );
    let elsewhere = match namespace {
        Some(ns) => format!(
            " in namespace {ns} ({} rejected and {} findings elsewhere)",
            left_out.0, left_out.1
        ),
        None => String::new(),
    };
    let finding = |f: &pb::LintFinding| {
        json!({"kind": f.kind, "object": f.object, "field": f.field, "check": f.check,
               "message": f.message, "suggestion": f.suggestion})
    };
    let text = if json_out {
        let v: Vec<Value> = r
            .objects
            .iter()
            .map(|o| {
                json!({"source": o.source, "kind": o.kind, "object": o.object, "errors": o.errors,
                             "applied": o.applied})
            })
            .collect();
        let f: Vec<Value> = r.findings.iter().map(finding).collect();
        serde_json::to_string_pretty(
            &json!({"objects": v, "findings": f, "lintRevision": r.lint_revision, "namespace": namespace,
                    "leftOut": {"rejected": left_out.0, "findings": left_out.1}}),
        )
        .expect("serialisable")
            + "\n"
    } else {
        let mut out = String::new();
        if !r.objects.iter().any(|o| !o.applied) {
            match namespace {
                Some(ns) => {
                    let _ = writeln!(out, "No rejected objects in namespace {ns}.");
                }
                None => out.push_str("No rejected objects.\n"),
            }
        }
        for o in r.objects.iter().filter(|o| !o.applied) {
            let _ = writeln!(out, "{}: {} {}", o.source, o.kind, o.object);
            for e in &o.errors {
                let _ = writeln!(out, "    {e}");
            }
        }
        for o in r.objects.iter().filter(|o| o.applied) {
            let _ = writeln!(
                out,
                "{}: {} {}: in force, with fields Palisade does not know:",
                o.source, o.kind, o.object
            );
            for e in &o.errors {
                let _ = writeln!(out, "    {e}");
            }
        }
        for f in &r.findings {
            let _ = writeln!(
                out,
                "warning: {} {}: {}: {} [{}]",
                f.kind, f.object, f.field, f.message, f.check
            );
            if !f.suggestion.is_empty() {
                let _ = writeln!(out, "    hint: {}", f.suggestion);
            }
        }
        let _ = writeln!(
            out,
            "{} rejected, {} with unknown fields, {} lint finding{} at revision {}{elsewhere}.",
            r.objects.iter().filter(|o| !o.applied).count(),
            r.objects.iter().filter(|o| o.applied).count(),
            r.findings.len(),
            if r.findings.len() == 1 { "" } else { "s" },
            r.lint_revision
        );
        out
    };
    Ok(RejectedReport {
        text,
        rejected: r.objects.iter().filter(|o| !o.applied).count(),
        narrowed: r.objects.iter().filter(|o| o.applied).count(),
        findings: r.findings.len(),
    })
}

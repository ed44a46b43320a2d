//! One manifest file read and parsed, and what it then holds in force.

use std::collections::BTreeMap;
use std::path::Path;

use palisade_files::read::{self, ReadError, Require};
use palisade_policy::manifest::{self, Limits, Location, Object, Problem};
use palisade_policy::model::Command;

use super::Rejected;

pub use palisade_policy::manifest::Key;

pub fn key(o: &Object) -> Key {
    o.key()
}

/// A file's content as read now.
#[derive(Clone, Debug, Default)]
pub struct Content {
    /// Valid objects; within one file the first definition of an object is used.
    pub objects: BTreeMap<Key, Object>,
    /// Rejected objects, unidentifiable documents, and why the file could not be read.
    pub problems: Vec<Rejected>,
    pub warnings: Vec<String>,
    /// Nothing in it can be trusted: unreadable, too large, not UTF-8, not parsable.
    pub broken: bool,
    /// The failure was I/O, worth retrying later (with back-off).
    pub io_error: bool,
    /// The file's metadata once read (to check nobody changed it since it was looked at).
    pub read_as: Option<std::fs::Metadata>,
}

fn problem(source: &str, kind: &str, object: &str, error: String) -> Rejected {
    Rejected {
        applied: false,
        source: source.to_string(),
        kind: kind.to_string(),
        object: object.to_string(),
        errors: vec![error],
    }
}

fn rejected(e: &manifest::ManifestError) -> Rejected {
    let (kind, object, errors) = match &e.problem {
        Problem::Rejected(r) => (
            r.kind.to_string(),
            r.object.clone(),
            r.errors
                .iter()
                .map(|f| format!("{}: {}", f.field, f.reason))
                .collect(),
        ),
        Problem::Malformed {
            kind,
            object,
            field,
            message,
        } => (
            kind.clone(),
            object.clone(),
            vec![format!("{field}: {message}")],
        ),
        other => (String::new(), String::new(), vec![other.to_string()]),
    };
    Rejected {
        applied: false,
        source: e.location.to_string(),
        kind,
        object,
        errors,
    }
}

/// Read and parse `path`, named `name` in reports.
pub fn read(path: &Path, name: &str, limits: &Limits, default_ns: &str) -> Content {
    match read_bytes(path, name, limits) {
        Ok((bytes, meta)) => parse_bytes(name, bytes, meta, limits, default_ns),
        Err(content) => *content,
    }
}

pub fn broken(name: &str, why: String, io_error: bool) -> Content {
    Content {
        problems: vec![problem(name, "", "", why)],
        broken: true,
        io_error,
        ..Content::default()
    }
}

/// The bytes of `path` (a regular file, within the size limit) and its metadata once read;
/// or, when it cannot be read, the content saying why.
pub fn read_bytes(
    path: &Path,
    name: &str,
    limits: &Limits,
) -> Result<(Vec<u8>, std::fs::Metadata), Box<Content>> {
    match read::file_and_metadata(path, limits.max_bytes as u64, Require::Regular) {
        Ok(r) => Ok(r),
        Err(e @ ReadError::Io(_)) => Err(Box::new(broken(name, format!("cannot read: {e}"), true))),
        Err(e) => Err(Box::new(broken(name, e.to_string(), false))),
    }
}

/// Parse the bytes read from the file named `name`, `meta` its metadata once read.
pub fn parse_bytes(
    name: &str,
    bytes: Vec<u8>,
    meta: std::fs::Metadata,
    limits: &Limits,
    default_ns: &str,
) -> Content {
    let Ok(text) = String::from_utf8(bytes) else {
        return Content {
            read_as: Some(meta),
            ..broken(name, "not UTF-8 text".into(), false)
        };
    };
    Content {
        read_as: Some(meta),
        ..parse(name, &text, limits, default_ns)
    }
}

/// Parse `text` (the content of the file named `name`).
pub fn parse(name: &str, text: &str, limits: &Limits, default_ns: &str) -> Content {
    let parsed = manifest::parse_with(name, text, default_ns, limits);
    let mut content = Content {
        problems: parsed.errors.iter().map(rejected).collect(),
        broken: parsed
            .errors
            .iter()
            .any(|e| matches!(e.problem, Problem::Syntax(_))),
        ..Content::default()
    };
    let mut first: BTreeMap<Key, Location> = BTreeMap::new();
    for (loc, o) in parsed.objects {
        if let Some(w) = o.warning() {
            content.warnings.push(format!("{loc}: {w}"));
        }
        let k = key(&o);
        if let Some(at) = first.get(&k) {
            content.problems.push(problem(
                &loc.to_string(),
                &k.0.to_string(),
                &k.1,
                format!(
                    "defined again in this file (first at document {}): a conflict; the first definition is used",
                    at.document
                ),
            ));
            continue;
        }
        first.insert(k.clone(), loc);
        content.objects.insert(k, o);
    }
    content
}

/// What a file holds in force once `content` is read over what it held before: its valid
/// objects, and, while it has any problem, every object it held and no longer validly
/// defines (an invalid edit, a document that cannot be identified or parsed never deletes
/// what it was). A broken file keeps everything.
pub fn in_force(previous: &BTreeMap<Key, Object>, content: &Content) -> BTreeMap<Key, Object> {
    if content.broken {
        return previous.clone();
    }
    let mut objects = content.objects.clone();
    if !content.problems.is_empty() {
        for (k, o) in previous {
            objects.entry(k.clone()).or_insert_with(|| o.clone());
        }
    }
    objects
}

fn rank(o: &Object) -> u8 {
    match o {
        Object::Namespace(_) => 0,
        Object::NetworkPolicy(_) => 1,
        Object::Pod(_) => 2,
    }
}

/// Upserts (namespaces, policies, pods) then deletes (pods, policies, namespaces): a safe
/// order within one revision.
pub fn commands(mut upserts: Vec<Object>, mut deletes: Vec<Object>) -> Vec<Command> {
    upserts.sort_by_key(rank);
    deletes.sort_by_key(|o| std::cmp::Reverse(rank(o)));
    let up = upserts.into_iter().map(Object::upsert);
    let down = deletes.into_iter().map(Object::delete);
    up.chain(down).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n";

    fn parse(text: &str) -> Content {
        super::parse("f.yaml", text, &Limits::default(), "default")
    }

    #[test]
    fn problems_keep_what_the_file_held() {
        let before = parse(&format!(
            "{POLICY}---\n{}",
            POLICY.replace("name: p", "name: q")
        ));
        assert_eq!(before.objects.len(), 2);
        let held = in_force(&BTreeMap::new(), &before);
        // q misspelled as a kind: it cannot be identified, so it is not deleted.
        let typo = parse(&format!(
            "{POLICY}---\n{}",
            POLICY
                .replace("name: p", "name: q")
                .replace("kind: NetworkPolicy", "kind: Networkpolicy")
        ));
        assert_eq!(typo.problems.len(), 1);
        assert_eq!(in_force(&held, &typo), held);
        // Fixed by removing q for good: now q goes.
        let clean = parse(POLICY);
        assert_eq!(in_force(&held, &clean).len(), 1);
        // Unparsable: everything stays.
        let broken = parse("apiVersion: [");
        assert!(broken.broken);
        assert_eq!(in_force(&held, &broken), held);
    }

    #[test]
    fn an_object_twice_in_one_file_is_a_conflict_and_the_first_is_used() {
        let c = parse(&format!(
            "{POLICY}---\n{}",
            POLICY.replace("port: 80", "port: 81")
        ));
        assert_eq!(c.objects.len(), 1);
        assert_eq!(c.problems.len(), 1);
        assert!(c.problems[0].errors[0].contains("first at document 1"));
        let Object::NetworkPolicy(p) = c.objects.values().next().unwrap() else {
            panic!()
        };
        assert_eq!(
            p.ingress.as_ref().unwrap()[0].ports.as_ref().unwrap()[0].port,
            palisade_policy::model::PortRef::Range(80, 80)
        );
    }
}

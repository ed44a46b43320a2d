//! A directory of manifests as the source of commands (until the Kubernetes watch exists).
//!
//! Every scan reads the directory (recursively; `.yaml`, `.yml`, `.json`; dotfiles and editor
//! leftovers skipped), re-parsing only files whose size, inode or modification time changed,
//! and turns the difference between what it finds and what it last reported into commands.
//! Editors and tools that write a temporary file and rename it over the old one are seen as a
//! change of that file. Like the Kubernetes API server:
//! * an edit that makes an object invalid is rejected, and the object's last valid version
//!   stays in force (and is reported);
//! * a file that no longer parses keeps the objects it last had (and is reported), so a
//!   half-written file never removes enforcement.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use palisade_policy::manifest::{self, Location, Object, Problem};
use palisade_policy::model::Command;

/// An object the source could not take, as introspection reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub source: String,
    pub kind: String,
    pub object: String,
    pub errors: Vec<String>,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Commands bringing the engine to the directory's content, in a safe order: upserts
    /// (namespaces, policies, pods) before deletes (pods, policies, namespaces).
    pub commands: Vec<Command>,
    pub rejected: Vec<Rejected>,
    pub warnings: Vec<String>,
}

type Key = (&'static str, String);

fn key(o: &Object) -> Key {
    let kind = match o {
        Object::Namespace(_) => "Namespace",
        Object::Pod(_) => "Pod",
        Object::NetworkPolicy(_) => "NetworkPolicy",
    };
    (kind, o.name())
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    }
}

struct CachedFile {
    stamp: Stamp,
    /// Valid objects of the latest parse.
    objects: Vec<(Location, Object)>,
    problems: Vec<Rejected>,
    warnings: Vec<String>,
    /// The file does not parse (or is not text): the objects it had stay in force.
    broken: bool,
}

pub struct ManifestDir {
    root: PathBuf,
    default_ns: String,
    files: BTreeMap<PathBuf, CachedFile>,
    current: BTreeMap<Key, Object>,
    /// The file each object in force came from.
    origin: BTreeMap<Key, PathBuf>,
}

fn wanted(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext_ok = p
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
    ext_ok && !name.starts_with('.') && !name.ends_with('~')
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // vanished between listing and stat: the next scan sees the result
        };
        if meta.is_dir() {
            if !path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .starts_with('.')
            {
                walk(&path, out)?;
            }
        } else if wanted(&path) {
            out.push((path, meta));
        }
    }
    Ok(())
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
        source: e.location.to_string(),
        kind,
        object,
        errors,
    }
}

impl ManifestDir {
    pub fn new(root: impl Into<PathBuf>, default_ns: &str) -> ManifestDir {
        ManifestDir {
            root: root.into(),
            default_ns: default_ns.to_string(),
            files: BTreeMap::new(),
            current: BTreeMap::new(),
            origin: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn refresh(&mut self, path: &Path, meta: &std::fs::Metadata) {
        let st = stamp(meta);
        if self.files.get(path).is_some_and(|f| f.stamp == st) {
            return;
        }
        let name = path
            .strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string();
        let text = match std::fs::read(path).map(String::from_utf8) {
            Ok(Ok(t)) => t,
            Ok(Err(_)) => {
                let problem = Rejected {
                    source: name,
                    kind: String::new(),
                    object: String::new(),
                    errors: vec!["not UTF-8 text; the objects it had stay in force".into()],
                };
                self.files.insert(
                    path.to_path_buf(),
                    CachedFile {
                        stamp: st,
                        objects: vec![],
                        problems: vec![problem],
                        warnings: vec![],
                        broken: true,
                    },
                );
                return;
            }
            Err(_) => return, // vanished or unreadable right now: the next scan retries
        };
        let parsed = manifest::parse(&name, &text, &self.default_ns);
        let broken = parsed
            .errors
            .iter()
            .any(|e| matches!(e.problem, Problem::Syntax(_)));
        let mut problems: Vec<Rejected> = parsed.errors.iter().map(rejected).collect();
        if broken {
            for p in &mut problems {
                p.errors
                    .push("the objects this file had stay in force".into());
            }
        }
        let warnings = parsed
            .objects
            .iter()
            .filter_map(|(loc, o)| match o {
                Object::Pod(p) if p.node.is_none() && p.peer_ip().is_some() => Some(format!(
                    "{loc}: Pod {} has an address but no spec.nodeName: a peer of others, enforced nowhere",
                    p.key
                )),
                _ => None,
            })
            .collect();
        self.files.insert(
            path.to_path_buf(),
            CachedFile {
                stamp: st,
                objects: parsed.objects,
                problems,
                warnings,
                broken,
            },
        );
    }

    /// Read the directory and return the commands that bring the engine to its content.
    pub fn scan(&mut self) -> std::io::Result<Scan> {
        let mut found = Vec::new();
        walk(&self.root, &mut found)?;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let present: std::collections::BTreeSet<PathBuf> =
            found.iter().map(|(p, _)| p.clone()).collect();
        self.files.retain(|p, _| present.contains(p));
        for (path, meta) in &found {
            self.refresh(path, meta);
        }

        let mut scan = Scan::default();
        let mut desired: BTreeMap<Key, Object> = BTreeMap::new();
        let mut origin: BTreeMap<Key, PathBuf> = BTreeMap::new();
        let mut seen_at: BTreeMap<Key, String> = BTreeMap::new();
        for (path, f) in &self.files {
            scan.rejected.extend(f.problems.iter().cloned());
            scan.warnings.extend(f.warnings.iter().cloned());
            for (loc, o) in &f.objects {
                let k = key(o);
                if let Some(prev) = seen_at.insert(k.clone(), loc.to_string()) {
                    scan.warnings.push(format!(
                        "{loc}: {} {} is also defined at {prev}; the later file wins",
                        k.0, k.1
                    ));
                }
                origin.insert(k.clone(), path.clone());
                desired.insert(k, o.clone());
            }
        }
        let current = &self.current;
        let mut keep = |k: &Key, path: &PathBuf| {
            if let (false, Some(old)) = (desired.contains_key(k), current.get(k)) {
                desired.insert(k.clone(), old.clone());
                origin.insert(k.clone(), path.clone());
            }
        };
        // A file that does not parse keeps the objects it had in force.
        for (k, path) in &self.origin {
            if self.files.get(path).is_some_and(|f| f.broken) {
                keep(k, path);
            }
        }
        // An invalid edit of an object keeps its last valid version in force.
        for r in &scan.rejected {
            let kind = ["Namespace", "Pod", "NetworkPolicy"]
                .into_iter()
                .find(|k| *k == r.kind);
            if let Some(kind) = kind {
                let k = (kind, r.object.clone());
                let path = self.origin.get(&k).cloned().unwrap_or_default();
                keep(&k, &path);
            }
        }
        scan.commands = diff(&self.current, &desired);
        self.current = desired;
        self.origin = origin;
        Ok(scan)
    }
}

fn rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "NetworkPolicy" => 1,
        _ => 2,
    }
}

/// Commands taking `old` to `new`: upserts of new or changed objects (namespaces, policies,
/// pods), then deletes (pods, policies, namespaces).
fn diff(old: &BTreeMap<Key, Object>, new: &BTreeMap<Key, Object>) -> Vec<Command> {
    let mut upserts: Vec<&Object> = new
        .iter()
        .filter(|(k, o)| old.get(*k) != Some(*o))
        .map(|(_, o)| o)
        .collect();
    upserts.sort_by_key(|o| rank(key(o).0));
    let mut deletes: Vec<&Object> = old
        .iter()
        .filter(|(k, _)| !new.contains_key(*k))
        .map(|(_, o)| o)
        .collect();
    deletes.sort_by_key(|o| std::cmp::Reverse(rank(key(o).0)));
    let up = upserts.into_iter().map(|o| match o.clone() {
        Object::Namespace(n) => Command::UpsertNamespace(n),
        Object::Pod(p) => Command::UpsertPod(p),
        Object::NetworkPolicy(p) => Command::UpsertPolicy(p),
    });
    let down = deletes.into_iter().map(|o| match o {
        Object::Namespace(n) => Command::DeleteNamespace(n.name.clone()),
        Object::Pod(p) => Command::DeletePod(p.key.clone()),
        Object::NetworkPolicy(p) => Command::DeletePolicy(p.key.clone()),
    });
    up.chain(down).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n";
    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {nodeName: n1, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.0.1}\n";

    fn kinds(cmds: &[Command]) -> Vec<&'static str> {
        cmds.iter().map(Command::kind).collect()
    }

    #[test]
    fn edits_renames_and_deletes_become_commands() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut src = ManifestDir::new(dir, "default");
        std::fs::write(dir.join("pol.yaml"), POLICY).unwrap();
        std::fs::write(dir.join("pod.yaml"), POD).unwrap();
        std::fs::write(dir.join(".pod.yaml.swp"), "garbage").unwrap();
        let s = src.scan().unwrap();
        assert_eq!(kinds(&s.commands), vec!["upsert-policy", "upsert-pod"]);
        assert!(src.scan().unwrap().commands.is_empty(), "nothing changed");

        // Atomic replace by rename, with a changed label.
        std::fs::write(dir.join("tmp.json.part"), POD.replace("app: a", "app: b")).unwrap();
        std::fs::rename(dir.join("tmp.json.part"), dir.join("pod.yaml")).unwrap();
        assert_eq!(kinds(&src.scan().unwrap().commands), vec!["upsert-pod"]);

        // Renaming a file to another name changes nothing.
        std::fs::rename(dir.join("pod.yaml"), dir.join("pods.yml")).unwrap();
        assert!(src.scan().unwrap().commands.is_empty());

        std::fs::remove_file(dir.join("pol.yaml")).unwrap();
        assert_eq!(kinds(&src.scan().unwrap().commands), vec!["delete-policy"]);
    }

    #[test]
    fn invalid_edits_keep_the_last_valid_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut src = ManifestDir::new(dir, "default");
        std::fs::write(dir.join("pol.yaml"), POLICY).unwrap();
        src.scan().unwrap();
        // Port 0 is invalid: rejected, the old policy stays, nothing is deleted.
        std::fs::write(dir.join("pol.yaml"), POLICY.replace("port: 80", "port: 0")).unwrap();
        let s = src.scan().unwrap();
        assert!(s.commands.is_empty(), "{:?}", s.commands);
        assert_eq!(s.rejected.len(), 1);
        assert_eq!(s.rejected[0].object, "x/p");
        // A syntax error keeps the whole file's objects.
        std::fs::write(dir.join("pol.yaml"), "apiVersion: [").unwrap();
        let s = src.scan().unwrap();
        assert!(s.commands.is_empty());
        assert!(s.rejected[0]
            .errors
            .iter()
            .any(|e| e.contains("stay in force")));
        // Fixed again.
        std::fs::write(dir.join("pol.yaml"), POLICY.replace("port: 80", "port: 81")).unwrap();
        let s = src.scan().unwrap();
        assert_eq!(kinds(&s.commands), vec!["upsert-policy"]);
        assert!(s.rejected.is_empty());
    }
}

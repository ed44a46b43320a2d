//! A directory of manifests as the source of commands (until the Kubernetes watch exists).
//!
//! Every scan lists the directory (recursively; `.yaml`, `.yml`, `.json`; dotfiles and editor
//! leftovers skipped) and re-parses only files whose size, inode or modification time changed;
//! only the objects those files held or now hold are compared, so an edit costs what it
//! touches, not the size of the cluster. Editors and tools that write a temporary file and
//! rename it over the old one are seen as a change of that file. Like the Kubernetes API
//! server:
//! * an edit that makes an object invalid is rejected, and the object's last valid version
//!   stays in force (and is reported);
//! * a file that no longer parses keeps the objects it had in force (and is reported), so a
//!   half-written file never removes enforcement.
//!
//! When several files define one object, the last file (by path) wins, with a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use palisade_policy::manifest::{self, Object, Problem};
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
    /// Everything currently rejected, across all files.
    pub rejected: Vec<Rejected>,
    pub warnings: Vec<String>,
}

type Key = (&'static str, String);

const KINDS: [&str; 3] = ["Namespace", "Pod", "NetworkPolicy"];

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
    /// The objects this file holds in force: its valid objects, plus the previous version of
    /// each object whose new version is rejected; all it had when it no longer parses.
    in_force: BTreeMap<Key, Object>,
    problems: Vec<Rejected>,
    warnings: Vec<String>,
}

pub struct ManifestDir {
    root: PathBuf,
    default_ns: String,
    files: BTreeMap<PathBuf, CachedFile>,
    /// Which files define each object.
    defined_in: BTreeMap<Key, BTreeSet<PathBuf>>,
    /// The objects reported so far (what the engine holds from this source).
    current: BTreeMap<Key, Object>,
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

fn pod_warnings(objects: &[(manifest::Location, Object)]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|(loc, o)| match o {
            Object::Pod(p) if p.node.is_none() && p.peer_ip().is_some() => Some(format!(
                "{loc}: Pod {} has an address but no spec.nodeName: a peer of others, enforced nowhere",
                p.key
            )),
            _ => None,
        })
        .collect()
}

impl ManifestDir {
    pub fn new(root: impl Into<PathBuf>, default_ns: &str) -> ManifestDir {
        ManifestDir {
            root: root.into(),
            default_ns: default_ns.to_string(),
            files: BTreeMap::new(),
            defined_in: BTreeMap::new(),
            current: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file's new content: what it holds in force and its problems. `None` when it
    /// cannot be read right now (the next scan retries).
    fn read(&self, path: &Path, st: Stamp, previous: &BTreeMap<Key, Object>) -> Option<CachedFile> {
        let name = path
            .strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string();
        let bytes = std::fs::read(path).ok()?;
        let Ok(text) = String::from_utf8(bytes) else {
            return Some(CachedFile {
                stamp: st,
                in_force: previous.clone(),
                problems: vec![Rejected {
                    source: name,
                    kind: String::new(),
                    object: String::new(),
                    errors: vec!["not UTF-8 text; the objects it had stay in force".into()],
                }],
                warnings: vec![],
            });
        };
        let parsed = manifest::parse(&name, &text, &self.default_ns);
        let mut problems: Vec<Rejected> = parsed.errors.iter().map(rejected).collect();
        if parsed
            .errors
            .iter()
            .any(|e| matches!(e.problem, Problem::Syntax(_)))
        {
            for p in &mut problems {
                p.errors
                    .push("the objects this file had stay in force".into());
            }
            return Some(CachedFile {
                stamp: st,
                in_force: previous.clone(),
                problems,
                warnings: vec![],
            });
        }
        let warnings = pod_warnings(&parsed.objects);
        let mut in_force: BTreeMap<Key, Object> = parsed
            .objects
            .into_iter()
            .map(|(_, o)| (key(&o), o))
            .collect();
        // An invalid edit of an object keeps the version this file had in force.
        for r in &problems {
            if let Some(kind) = KINDS.into_iter().find(|k| *k == r.kind) {
                let k = (kind, r.object.clone());
                if let (false, Some(old)) = (in_force.contains_key(&k), previous.get(&k)) {
                    in_force.insert(k, old.clone());
                }
            }
        }
        Some(CachedFile {
            stamp: st,
            in_force,
            problems,
            warnings,
        })
    }

    /// Read what changed in the directory and return the commands that bring the engine to
    /// its content.
    pub fn scan(&mut self) -> std::io::Result<Scan> {
        let mut found = Vec::new();
        walk(&self.root, &mut found)?;
        let present: BTreeSet<&PathBuf> = found.iter().map(|(p, _)| p).collect();
        let mut touched: BTreeSet<Key> = BTreeSet::new();

        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            let f = self.files.remove(&path).expect("listed");
            for k in f.in_force.into_keys() {
                self.forget(&k, &path);
                touched.insert(k);
            }
        }
        for (path, meta) in &found {
            let st = stamp(meta);
            if self.files.get(path).is_some_and(|f| f.stamp == st) {
                continue;
            }
            let empty = BTreeMap::new();
            let previous = self.files.get(path).map_or(&empty, |f| &f.in_force);
            let Some(new) = self.read(path, st, previous) else {
                continue;
            };
            let old = self
                .files
                .remove(path)
                .map(|f| f.in_force)
                .unwrap_or_default();
            for (k, o) in &old {
                if new.in_force.get(k) != Some(o) {
                    touched.insert(k.clone());
                }
                if !new.in_force.contains_key(k) {
                    self.forget(k, path);
                }
            }
            for (k, o) in &new.in_force {
                if old.get(k) != Some(o) {
                    touched.insert(k.clone());
                }
                self.defined_in
                    .entry(k.clone())
                    .or_default()
                    .insert(path.clone());
            }
            self.files.insert(path.clone(), new);
        }

        let mut scan = Scan::default();
        let mut upserts: Vec<Object> = Vec::new();
        let mut deletes: Vec<Object> = Vec::new();
        for k in touched {
            // The last file (by path) defining the object wins.
            let effective = self
                .defined_in
                .get(&k)
                .and_then(|paths| paths.last())
                .and_then(|p| self.files[p].in_force.get(&k))
                .cloned();
            match (effective, self.current.get(&k)) {
                (Some(new), Some(old)) if new == *old => {}
                (Some(new), _) => {
                    self.current.insert(k, new.clone());
                    upserts.push(new);
                }
                (None, Some(_)) => deletes.push(self.current.remove(&k).expect("present")),
                (None, None) => {}
            }
        }
        scan.commands = commands(upserts, deletes);
        for f in self.files.values() {
            scan.rejected.extend(f.problems.iter().cloned());
            scan.warnings.extend(f.warnings.iter().cloned());
        }
        for ((kind, name), paths) in &self.defined_in {
            if paths.len() > 1 {
                let list: Vec<String> = paths
                    .iter()
                    .map(|p| {
                        p.strip_prefix(&self.root)
                            .unwrap_or(p)
                            .display()
                            .to_string()
                    })
                    .collect();
                scan.warnings.push(format!(
                    "{kind} {name} is defined in {}; the last one wins",
                    list.join(", ")
                ));
            }
        }
        Ok(scan)
    }

    fn forget(&mut self, k: &Key, path: &Path) {
        if let Some(paths) = self.defined_in.get_mut(k) {
            paths.remove(path);
            if paths.is_empty() {
                self.defined_in.remove(k);
            }
        }
    }
}

fn rank(o: &Object) -> u8 {
    match o {
        Object::Namespace(_) => 0,
        Object::NetworkPolicy(_) => 1,
        Object::Pod(_) => 2,
    }
}

/// Upserts (namespaces, policies, pods) then deletes (pods, policies, namespaces).
fn commands(mut upserts: Vec<Object>, mut deletes: Vec<Object>) -> Vec<Command> {
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
    fn namespace_labels_and_container_ports_are_changes_too() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut src = ManifestDir::new(dir, "default");
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: red}}\n";
        std::fs::write(dir.join("ns.yaml"), ns).unwrap();
        std::fs::write(dir.join("pod.yaml"), POD).unwrap();
        src.scan().unwrap();
        std::fs::write(dir.join("ns.yaml"), ns.replace("red", "blue")).unwrap();
        assert_eq!(
            kinds(&src.scan().unwrap().commands),
            vec!["upsert-namespace"]
        );
        let with_port = POD.replace(
            "image: i}",
            "image: i, ports: [{name: http, containerPort: 8080}]}",
        );
        std::fs::write(dir.join("pod.yaml"), with_port).unwrap();
        assert_eq!(kinds(&src.scan().unwrap().commands), vec!["upsert-pod"]);
        std::fs::remove_file(dir.join("ns.yaml")).unwrap();
        assert_eq!(
            kinds(&src.scan().unwrap().commands),
            vec!["delete-namespace"]
        );
    }

    #[test]
    fn an_object_in_two_files_comes_from_the_last_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut src = ManifestDir::new(dir, "default");
        std::fs::write(dir.join("a.yaml"), POLICY).unwrap();
        std::fs::write(dir.join("b.yaml"), POLICY.replace("port: 80", "port: 81")).unwrap();
        let s = src.scan().unwrap();
        let Command::UpsertPolicy(p) = &s.commands[0] else {
            panic!()
        };
        assert_eq!(
            p.ingress.as_ref().unwrap()[0].ports.as_ref().unwrap()[0].port,
            palisade_policy::model::PortRef::Range(81, 81)
        );
        assert!(
            s.warnings.iter().any(|w| w.contains("a.yaml, b.yaml")),
            "{:?}",
            s.warnings
        );
        // Without b.yaml, a.yaml's version is the one in force.
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        let s = src.scan().unwrap();
        let Command::UpsertPolicy(p) = &s.commands[0] else {
            panic!()
        };
        assert_eq!(
            p.ingress.as_ref().unwrap()[0].ports.as_ref().unwrap()[0].port,
            palisade_policy::model::PortRef::Range(80, 80)
        );
        assert!(s.warnings.is_empty());
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

//! Which files of a directory tree are manifests: the one walk the controller and
//! `palisadectl` share, so a prediction is never made from a file that is never enforced.
//!
//! * Names: `.yaml`, `.yml` or `.json`; dotfiles and dot-directories (editor swap files,
//!   temporary files of atomic writes, a ConfigMap volume's `..data`) and editor leftovers
//!   (`name~`, `#name#`) are not manifests.
//! * Symbolic links are followed (a ConfigMap volume is made of them), but each directory is
//!   read once: a link back to a directory already read (a loop) is reported and skipped.
//!   A link leading out of the tree (to `/`, to `/etc`) is reported and not followed, unless
//!   its target lies under a root the caller allows: a link cannot make the walk read the
//!   whole filesystem, nor enforce manifests found anywhere on the machine.
//! * Only regular files are listed; a FIFO, socket or device with a manifest's name is
//!   reported and skipped, so nothing can block or stream forever.
//! * A path that cannot be read (an unreadable directory, a dangling link) is reported on its
//!   own and the rest of the tree is still listed. A reported path is not absent: a caller
//!   must not take the files under it as deleted.

use std::collections::BTreeSet;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::read::kind;

/// Directories deeper than this below the root are reported and not read.
pub const MAX_DEPTH: usize = 32;

/// A manifest file: its path (below the root, through links as named) and metadata (of what
/// the path resolves to).
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    pub meta: Metadata,
}

/// A path the walk did not take, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// What one walk found, in path order.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<Found>,
    pub skipped: Vec<Skipped>,
}

/// Whether a file name is a manifest's.
pub fn is_manifest(name: &str) -> bool {
    let ext_ok = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
    ext_ok && !hidden(name) && !name.ends_with('~') && !name.starts_with('#')
}

fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// The manifest files under `root`, following no link out of it. Fails only when `root`
/// itself cannot be listed.
pub fn manifests(root: &Path) -> std::io::Result<Walk> {
    manifests_following(root, &[])
}

/// Where links may lead: under the root, or under one of the roots allowed.
struct Bounds {
    inside: Vec<PathBuf>,
}

impl Bounds {
    /// Why the link at `path` is not followed, if it is not.
    fn refuses(&self, path: &Path) -> Option<String> {
        let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            return None;
        }
        let target = std::fs::canonicalize(path).ok()?;
        if self.inside.iter().any(|r| target.starts_with(r)) {
            return None;
        }
        Some(format!(
            "symbolic link leading out of the manifests directory (to {}): not followed; \
             allow its target's directory explicitly to follow it",
            target.display()
        ))
    }
}

/// The manifest files under `root`, following links out of it only to targets under one of
/// `allowed` (directories). Fails only when `root` itself cannot be listed.
pub fn manifests_following(root: &Path, allowed: &[PathBuf]) -> std::io::Result<Walk> {
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    let entries = list(root)?;
    let mut walk = Walk::default();
    let mut seen = BTreeSet::from([(meta.dev(), meta.ino())]);
    let inside = std::iter::once(root)
        .chain(allowed.iter().map(PathBuf::as_path))
        .map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.to_path_buf()))
        .collect();
    visit(entries, 1, &Bounds { inside }, &mut seen, &mut walk);
    Ok(walk)
}

fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        entries.push(entry?.path());
    }
    entries.sort();
    Ok(entries)
}

fn visit(
    entries: Vec<PathBuf>,
    depth: usize,
    bounds: &Bounds,
    seen: &mut BTreeSet<(u64, u64)>,
    walk: &mut Walk,
) {
    let mut skip = |path: &Path, reason: String| {
        walk.skipped.push(Skipped {
            path: path.to_path_buf(),
            reason,
        })
    };
    let mut dirs = Vec::new();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if hidden(&name) {
            continue;
        }
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Vanished since the listing: the next walk sees the result. A link that
                // leads nowhere is worth saying, if it has a manifest's name.
                if std::fs::symlink_metadata(&path).is_ok() && is_manifest(&name) {
                    skip(&path, format!("symbolic link that cannot be followed: {e}"));
                }
                continue;
            }
            Err(e) => {
                // There, but not readable now (permissions, I/O): said, so whoever reads the
                // walk keeps what the path held instead of taking it as deleted.
                skip(&path, format!("cannot read its metadata: {e}"));
                continue;
            }
        };
        if meta.is_dir() || is_manifest(&name) {
            if let Some(why) = bounds.refuses(&path) {
                skip(&path, why);
                continue;
            }
        }
        if meta.is_dir() {
            dirs.push((path, meta));
        } else if is_manifest(&name) {
            if meta.is_file() {
                walk.files.push(Found { path, meta });
            } else {
                skip(
                    &path,
                    format!(
                        "not a regular file but a {}: skipped",
                        kind(meta.file_type())
                    ),
                );
            }
        }
    }
    for (path, meta) in dirs {
        if !seen.insert((meta.dev(), meta.ino())) {
            walk.skipped.push(Skipped {
                path,
                reason:
                    "a directory already read through another path (a symbolic link loop?): skipped"
                        .into(),
            });
            continue;
        }
        if depth >= MAX_DEPTH {
            walk.skipped.push(Skipped {
                path,
                reason: format!("more than {MAX_DEPTH} directories deep: skipped"),
            });
            continue;
        }
        match list(&path) {
            Ok(entries) => visit(entries, depth + 1, bounds, seen, walk),
            Err(e) => walk.skipped.push(Skipped {
                path,
                reason: format!("cannot list this directory: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn names(walk: &Walk, root: &Path) -> Vec<String> {
        walk.files
            .iter()
            .map(|f| f.path.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn names_links_loops_and_special_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for f in [
            "a.yaml",
            "b.json",
            "c.txt",
            ".hidden.yaml",
            "d.yaml~",
            "#e.yaml#",
        ] {
            std::fs::write(root.join(f), "x").unwrap();
        }
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("sub/deeper/f.yml"), "x").unwrap();
        std::fs::create_dir(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/g.yaml"), "x").unwrap();
        // Two links back to the root, and one into sub: each directory is read once.
        symlink(".", root.join("loop1")).unwrap();
        symlink("..", root.join("sub/loop2")).unwrap();
        // A link to a file is followed; a dangling one is reported.
        symlink("a.yaml", root.join("link.yaml")).unwrap();
        symlink("missing.yaml", root.join("dangling.yaml")).unwrap();
        // A FIFO and a device with manifest names: reported, never opened.
        let fifo = std::ffi::CString::new(root.join("p.yaml").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        symlink("/dev/zero", root.join("zero.yaml")).unwrap();

        let walk = manifests(root).unwrap();
        assert_eq!(
            names(&walk, root),
            vec!["a.yaml", "b.json", "link.yaml", "sub/deeper/f.yml"]
        );
        let skipped: Vec<(String, &str)> = walk
            .skipped
            .iter()
            .map(|s| {
                let p = s.path.strip_prefix(root).unwrap().display().to_string();
                (p, s.reason.as_str())
            })
            .collect();
        let why = |p: &str| skipped.iter().find(|(q, _)| q == p).map(|(_, r)| *r);
        assert!(why("dangling.yaml").unwrap().contains("cannot be followed"));
        assert!(why("p.yaml").unwrap().contains("FIFO"));
        assert!(why("zero.yaml")
            .unwrap()
            .contains("out of the manifests directory"));
        assert!(why("loop1").unwrap().contains("already read"));
        assert!(why("sub/loop2").unwrap().contains("already read"));
    }

    #[test]
    fn links_out_of_the_tree_are_followed_only_to_roots_allowed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("manifests");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(root.join("sub/a.yaml"), "x").unwrap();
        std::fs::write(elsewhere.join("b.yaml"), "x").unwrap();
        // Inside: followed (a ConfigMap volume's layout).
        symlink("sub", root.join("..data")).unwrap();
        symlink("..data/a.yaml", root.join("a.yaml")).unwrap();
        // Out of the tree: the whole filesystem, a directory, a file.
        symlink("/", root.join("everything")).unwrap();
        symlink(&elsewhere, root.join("other")).unwrap();
        symlink(elsewhere.join("b.yaml"), root.join("b.yaml")).unwrap();

        let walk = manifests(&root).unwrap();
        assert_eq!(names(&walk, &root), vec!["a.yaml", "sub/a.yaml"]);
        let refused: Vec<String> = walk
            .skipped
            .iter()
            .filter(|s| s.reason.contains("leading out of the manifests directory"))
            .map(|s| s.path.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        assert_eq!(refused, vec!["b.yaml", "everything", "other"]);

        let walk = manifests_following(&root, std::slice::from_ref(&elsewhere)).unwrap();
        assert_eq!(
            names(&walk, &root),
            vec!["a.yaml", "b.yaml", "other/b.yaml", "sub/a.yaml"]
        );
        assert_eq!(walk.skipped.len(), 1, "{:?}", walk.skipped);
    }

    #[test]
    fn an_unreadable_directory_is_reported_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("a.yaml"), "x").unwrap();
        std::fs::create_dir(root.join("locked")).unwrap();
        std::fs::write(root.join("locked/b.yaml"), "x").unwrap();
        std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        // As root, permissions do not apply; walk from a thread whose file-system identity is
        // an unprivileged user (setfsuid is per thread and drops the DAC-override capability).
        let walk = std::thread::spawn(move || {
            unsafe { libc::setfsuid(65534) };
            let w = manifests(&root);
            unsafe { libc::setfsuid(0) };
            w
        })
        .join()
        .unwrap();
        let walk = walk.unwrap();
        assert_eq!(walk.files.len(), 1);
        assert_eq!(walk.skipped.len(), 1);
        assert!(
            walk.skipped[0].reason.contains("cannot list"),
            "{:?}",
            walk.skipped
        );
        std::fs::set_permissions(
            tmp.path().join("locked"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
}

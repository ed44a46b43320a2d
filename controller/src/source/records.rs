//! The source's memory across restarts, under `<state-dir>/source/`: for every manifest file,
//! the objects it holds in force, and which file's version of a conflicting object is in
//! force. So a file that is broken, half-written or conflicting when the controller starts
//! keeps what it last held validly, instead of its objects being deleted from every node.
//!
//! One record per manifest file (`files/<escaped path>.json`), so an edit rewrites one small
//! record; records of many files (at startup) are written together with one file-system sync.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use palisade_files::atomic;
use palisade_policy::manifest::Object;
use serde::{Deserialize, Serialize};

use super::file::{key, Key};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is not a record of the manifest source ({1}); move it away to start without it (the objects it kept are then taken from the files as they are)")]
    Corrupt(PathBuf, String),
}

#[derive(Serialize, Deserialize)]
struct FileRecord {
    /// The manifest file, relative to the manifests directory.
    path: PathBuf,
    objects: Vec<Object>,
}

#[derive(Serialize, Deserialize, Default)]
struct WinnerRecord {
    /// (kind, name, file in force) of each object defined in several files.
    winners: Vec<(palisade_policy::k8s::Kind, String, PathBuf)>,
}

/// What the records held at startup.
#[derive(Default)]
pub struct Saved {
    pub files: BTreeMap<PathBuf, BTreeMap<Key, Object>>,
    pub winners: BTreeMap<Key, PathBuf>,
}

/// Where records live; `None`: nowhere (in-memory controllers in tests).
pub struct Records {
    dir: Option<PathBuf>,
}

const WINNERS: &str = "conflicts.json";

/// A record's file name: the relative path made flat, or a hash when it would be too long.
fn file_name(path: &Path) -> String {
    let flat: String = path
        .to_string_lossy()
        .chars()
        .flat_map(|c| match c {
            '%' => "%25".chars().collect::<Vec<_>>(),
            '/' => "%2F".chars().collect(),
            c => vec![c],
        })
        .collect();
    if flat.len() <= 200 {
        return format!("{flat}.json");
    }
    // FNV-1a: stable across Rust versions, unlike the standard hasher.
    let hash = path
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("long-{hash:016x}.json")
}

impl Records {
    /// Open the records under `state_dir` (created if missing) and read what they hold.
    pub fn open(state_dir: Option<&Path>) -> Result<(Records, Saved), RecordError> {
        let Some(state_dir) = state_dir else {
            return Ok((Records { dir: None }, Saved::default()));
        };
        let dir = state_dir.join("source");
        let files_dir = dir.join("files");
        std::fs::create_dir_all(&files_dir).map_err(|e| RecordError::Io(files_dir.clone(), e))?;
        for d in [&dir, &files_dir] {
            let stale = palisade_files::atomic::remove_stale(d)
                .map_err(|e| RecordError::Io(d.to_path_buf(), e))?;
            for f in stale {
                tracing::info!(file = %f.display(), "removed a temporary file an earlier run left");
            }
        }
        let mut saved = Saved::default();
        let entries =
            std::fs::read_dir(&files_dir).map_err(|e| RecordError::Io(files_dir.clone(), e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| RecordError::Io(files_dir.clone(), e))?
                .path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || !name.ends_with(".json") {
                continue; // a temporary file of an interrupted write
            }
            // Bounded and regular files only: a record is never a device or a FIFO.
            let bytes =
                palisade_files::read::file(&path, 1 << 30, palisade_files::read::Require::Regular)
                    .map_err(|e| RecordError::Corrupt(path.clone(), e.to_string()))?;
            let record: FileRecord = serde_json::from_slice(&bytes)
                .map_err(|e| RecordError::Corrupt(path.clone(), e.to_string()))?;
            let objects = record.objects.into_iter().map(|o| (key(&o), o)).collect();
            saved.files.insert(record.path, objects);
        }
        let winners_path = dir.join(WINNERS);
        match std::fs::read(&winners_path) {
            Ok(bytes) => {
                let record: WinnerRecord = serde_json::from_slice(&bytes)
                    .map_err(|e| RecordError::Corrupt(winners_path.clone(), e.to_string()))?;
                saved.winners = record
                    .winners
                    .into_iter()
                    .map(|(kind, name, path)| ((kind, name), path))
                    .collect();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RecordError::Io(winners_path, e)),
        }
        Ok((Records { dir: Some(dir) }, saved))
    }

    /// Record what `changed` files hold (`None`: the file is gone) and, when given, the
    /// winners of conflicts; all or, on error, possibly some of it.
    pub fn save(
        &self,
        changed: &[(PathBuf, Option<&BTreeMap<Key, Object>>)],
        winners: Option<&BTreeMap<Key, PathBuf>>,
    ) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut writes = Vec::new();
        for (path, objects) in changed {
            let target = dir.join("files").join(file_name(path));
            match objects {
                Some(objects) => {
                    let record = FileRecord {
                        path: path.clone(),
                        objects: objects.values().cloned().collect(),
                    };
                    let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
                    writes.push((target, bytes));
                }
                None => match std::fs::remove_file(&target) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                },
            }
        }
        if let Some(winners) = winners {
            let record = WinnerRecord {
                winners: winners
                    .iter()
                    .map(|((kind, name), path)| (*kind, name.clone(), path.clone()))
                    .collect(),
            };
            let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
            writes.push((dir.join(WINNERS), bytes));
        }
        atomic::write_batch(&writes)?;
        if changed.iter().any(|(_, o)| o.is_none()) {
            atomic::sync_dir(&dir.join("files").join("x"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_flat_unique_and_bounded() {
        assert_eq!(file_name(Path::new("a/b%c.yaml")), "a%2Fb%25c.yaml.json");
        let long = "d/".repeat(150) + "x.yaml";
        let name = file_name(Path::new(&long));
        assert!(name.starts_with("long-") && name.len() < 40);
    }

    #[test]
    fn what_is_saved_is_read_back_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (records, saved) = Records::open(Some(dir.path())).unwrap();
        assert!(saved.files.is_empty());
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
        let content = super::super::file::parse(
            "ns.yaml",
            text,
            &palisade_policy::manifest::Limits::default(),
            "default",
        );
        let winners = BTreeMap::from([(
            (palisade_policy::k8s::Kind::Namespace, "x".to_string()),
            PathBuf::from("ns.yaml"),
        )]);
        records
            .save(
                &[
                    (PathBuf::from("sub/ns.yaml"), Some(&content.objects)),
                    (PathBuf::from("gone.yaml"), None),
                ],
                Some(&winners),
            )
            .unwrap();
        let (_, saved) = Records::open(Some(dir.path())).unwrap();
        assert_eq!(saved.files[Path::new("sub/ns.yaml")], content.objects);
        assert_eq!(saved.winners, winners);
        records
            .save(&[(PathBuf::from("sub/ns.yaml"), None)], None)
            .unwrap();
        let (_, saved) = Records::open(Some(dir.path())).unwrap();
        assert!(saved.files.is_empty());
        std::fs::write(dir.path().join("source/files/bad.json"), "{").unwrap();
        let err = Records::open(Some(dir.path())).err().unwrap();
        assert!(err.to_string().contains("bad.json"), "{err}");
    }
}

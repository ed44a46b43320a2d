//! The agent's last realized slice on disk, so a restarted agent resumes by version instead
//! of taking a snapshot.

use std::path::{Path, PathBuf};

use palisade_policy::slice::NodeSlice;
use palisade_proto::convert;
use palisade_proto::v1 as pb;
use prost::Message;

const FILE: &str = "slice.pb";

pub struct StateStore {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is not a saved slice: {1}")]
    Corrupt(PathBuf, String),
}

impl StateStore {
    /// The store in `dir`, created if missing.
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.to_path_buf(), e))?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The saved slice, if any; checked against its recorded digest.
    pub fn load(&self) -> Result<Option<NodeSlice>, StoreError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io(path, e)),
        };
        let corrupt = |why: String| StoreError::Corrupt(path.clone(), why);
        let wire = pb::NodeSlice::decode(&bytes[..]).map_err(|e| corrupt(e.to_string()))?;
        let (slice, digest) = convert::slice_from_pb(&wire).map_err(|e| corrupt(e.to_string()))?;
        if slice.digest() != digest {
            return Err(corrupt(format!(
                "content digest {} is not the recorded {digest}",
                slice.digest()
            )));
        }
        Ok(Some(slice))
    }

    /// Save `slice` so that a crash or a full disk leaves either the previous or this one
    /// (and no temporary file).
    pub fn save(&self, slice: &NodeSlice) -> Result<(), StoreError> {
        let path = self.path();
        palisade_files::atomic::write(&path, &convert::slice_to_pb(slice).encode_to_vec())
            .map_err(|e| StoreError::Io(path.clone(), e))
    }
}

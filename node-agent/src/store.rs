//! The agent's last realized slice on disk, so a restarted agent resumes by version instead
//! of taking a snapshot.

use std::path::{Path, PathBuf};

use palisade_policy::slice::NodeSlice;
use palisade_proto::convert;
use palisade_proto::v1 as pb;
use prost::Message;

const FILE: &str = "slice.pb";

/// The largest saved slice read back: the controller's largest message by default (a
/// snapshot of a big node). A larger file, a link to a device or a FIFO is refused, never
/// read without bound or waited on.
pub const MAX_SAVED_BYTES: u64 = 256 << 20;

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
    /// The store in `dir`, created if missing; temporary files a killed agent left there
    /// are removed.
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.to_path_buf(), e))?;
        for stale in palisade_files::atomic::remove_stale(dir)
            .map_err(|e| StoreError::Io(dir.to_path_buf(), e))?
        {
            tracing::info!(file = %stale.display(), "removed a temporary file an earlier run left");
        }
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
        use palisade_files::read::{self, ReadError, Require};
        let corrupt = |why: String| StoreError::Corrupt(path.clone(), why);
        let bytes = match read::file(&path, MAX_SAVED_BYTES, Require::Regular) {
            Ok(b) => b,
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(ReadError::Io(e)) => return Err(StoreError::Io(path, e)),
            Err(e) => return Err(corrupt(e.to_string())),
        };
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

//! Reading manifests from files, directories and stdin into a compiled [`Engine`].

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

type Result<T> = std::result::Result<T, Error>;
use palisade_files::read::{self, Require};
use palisade_files::walk;
use palisade_policy::manifest::{self, Limits, Location, Object};
use palisade_policy::model::Command;
use palisade_policy::Engine;

/// What was read: valid objects (the first definition of each, as the controller keeps it)
/// and what went wrong.
#[derive(Default)]
pub struct Loaded {
    pub objects: BTreeMap<(String, String), (Location, Object)>,
    /// Rejected objects and unparsable documents, one line each.
    pub errors: Vec<String>,
    /// Things worth knowing that do not invalidate anything.
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Compile everything at revision 1.
    pub fn engine(&self) -> Engine {
        let mut commands: Vec<Command> = self
            .objects
            .values()
            .map(|(_, o)| o.clone().upsert())
            .collect();
        commands.sort_by_key(|c| match c {
            Command::UpsertNamespace(_) => 0,
            Command::UpsertPolicy(_) => 1,
            _ => 2,
        });
        Engine::load(1, commands)
    }

    /// Print warnings and errors to stderr; true when there were errors.
    pub fn report(&self) -> bool {
        for w in &self.warnings {
            eprintln!("warning: {w}");
        }
        for e in &self.errors {
            eprintln!("error: {e}");
        }
        if !self.errors.is_empty() {
            let n = self.errors.len();
            eprintln!(
                "{n} object{} rejected and skipped; everything else was evaluated",
                if n == 1 { "" } else { "s" }
            );
        }
        !self.errors.is_empty()
    }
}

/// Read every `-f` argument (`-` is stdin): a file named explicitly is read whatever its
/// name or kind (a FIFO from `<(…)` too); a directory is walked as the controller walks its
/// manifests directory ([`palisade_files::walk`]), so a prediction never comes from a file the
/// controller would not read. Objects without a namespace go to `default_ns`.
pub fn load(paths: &[PathBuf], default_ns: &str) -> Result<Loaded> {
    let (sources, warnings) = read_sources(paths)?;
    let mut loaded = parse_sources(&sources, default_ns);
    loaded.warnings.splice(0..0, warnings);
    Ok(loaded)
}

/// Named texts: `(name, text)` of each file read.
pub type Sources = Vec<(String, String)>;

/// The text of every `-f` argument, named (`<stdin>` for `-`), and the paths a directory
/// walk skipped (as warnings).
pub fn read_sources(paths: &[PathBuf]) -> Result<(Sources, Vec<String>)> {
    if paths.is_empty() {
        return Err(Error::Usage(
            "no manifests given: pass -f FILE, -f DIRECTORY or -f - (stdin)".into(),
        ));
    }
    let limit = Limits::default().max_bytes as u64;
    let mut sources: Vec<(String, String)> = Vec::new();
    let mut warnings = Vec::new();
    let text = |path: &Path, bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|_| {
            Error::Read(
                path.to_path_buf(),
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
            )
        })
    };
    for p in paths {
        if p.as_os_str() == "-" {
            let mut bytes = Vec::new();
            std::io::stdin()
                .take(limit + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::Read("<stdin>".into(), e))?;
            if bytes.len() as u64 > limit {
                return Err(Error::Usage(format!("stdin holds more than {limit} bytes")));
            }
            sources.push(("<stdin>".into(), text(Path::new("<stdin>"), bytes)?));
            continue;
        }
        let is_dir = std::fs::metadata(p)
            .map_err(|e| Error::Read(p.clone(), e))?
            .is_dir();
        let found: Vec<PathBuf> = if is_dir {
            let walk = walk::manifests(p).map_err(|e| Error::Read(p.clone(), e))?;
            warnings.extend(
                walk.skipped
                    .iter()
                    .map(|s| format!("{}: {}", s.path.display(), s.reason)),
            );
            if walk.files.is_empty() {
                return Err(Error::Usage(format!(
                    "{} holds no .yaml, .yml or .json files",
                    p.display()
                )));
            }
            walk.files.into_iter().map(|f| f.path).collect()
        } else {
            vec![p.clone()]
        };
        for f in found {
            let require = if is_dir {
                Require::Regular
            } else {
                Require::Any
            };
            let bytes = read::file(&f, limit, require).map_err(|e| match e {
                read::ReadError::Io(e) => Error::Read(f.clone(), e),
                other => Error::Usage(format!("{}: {other}", f.display())),
            })?;
            sources.push((f.display().to_string(), text(&f, bytes)?));
        }
    }
    Ok((sources, warnings))
}

/// Parse already-read sources (name, text).
pub fn parse_sources(sources: &[(String, String)], default_ns: &str) -> Loaded {
    let mut loaded = Loaded::default();
    for (name, text) in sources {
        let parsed = manifest::parse(name, text, default_ns);
        loaded
            .errors
            .extend(parsed.errors.iter().map(|e| e.to_string()));
        for (loc, obj) in parsed.objects {
            if let Some(w) = obj.warning() {
                loaded.warnings.push(format!("{loc}: {w}"));
            }
            // As the controller does: an object defined twice is a conflict, and the first
            // definition (by path, then by document) is the one in force.
            let key = (obj.kind().to_string(), obj.name());
            if let Some((first, _)) = loaded.objects.get(&key) {
                loaded.errors.push(format!(
                    "{loc}: {} {} is also defined at {first}: a conflict; the first definition is used",
                    key.0, key.1
                ));
                continue;
            }
            loaded.objects.insert(key, (loc, obj));
        }
    }
    loaded
}

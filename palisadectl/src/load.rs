//! Reading manifests from files, directories and stdin into a compiled [`Engine`].

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

type Result<T> = std::result::Result<T, Error>;
use palisade_policy::manifest::{self, Location, Object};
use palisade_policy::model::Command;
use palisade_policy::Engine;

/// What was read: valid objects (the last definition of each wins) and what went wrong.
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

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Files under `path`: itself, or every .yaml/.yml/.json file below a directory, sorted.
fn files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Read(path.to_path_buf(), e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .and_then(|d| {
            d.map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
        })
        .map_err(|e| Error::Read(path.to_path_buf(), e))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(files(&p)?);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            out.push(p);
        }
    }
    Ok(out)
}

/// Read every `-f` argument (`-` is stdin). Objects without a namespace go to `default_ns`.
pub fn load(paths: &[PathBuf], default_ns: &str) -> Result<Loaded> {
    if paths.is_empty() {
        return Err(Error::Usage(
            "no manifests given: pass -f FILE, -f DIRECTORY or -f - (stdin)".into(),
        ));
    }
    let mut sources: Vec<(String, String)> = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Error::Read("<stdin>".into(), e))?;
            sources.push(("<stdin>".into(), text));
            continue;
        }
        let found = files(p)?;
        if found.is_empty() {
            return Err(Error::Usage(format!(
                "{} holds no .yaml, .yml or .json files",
                p.display()
            )));
        }
        for f in found {
            let text = std::fs::read_to_string(&f).map_err(|e| Error::Read(f.clone(), e))?;
            sources.push((f.display().to_string(), text));
        }
    }
    Ok(parse_sources(&sources, default_ns))
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
            if let Object::Pod(p) = &obj {
                if p.node.is_none() && p.peer_ip().is_some() {
                    loaded.warnings.push(format!(
                        "{loc}: Pod {} has an address but no spec.nodeName: it is a peer of other pods but no node enforces its own policies",
                        p.key
                    ));
                }
            }
            let key = (obj.kind().to_string(), obj.name());
            if let Some((prev, _)) = loaded.objects.get(&key) {
                loaded.warnings.push(format!(
                    "{loc}: {} {} is also defined at {prev}; the later definition wins",
                    key.0, key.1
                ));
            }
            loaded.objects.insert(key, (loc, obj));
        }
    }
    loaded
}

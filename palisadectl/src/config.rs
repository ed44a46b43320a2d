//! The operator's context file: where the controller is and which credentials reach it, so
//! nobody exports three variables. `~/.config/palisade/config` (or `$XDG_CONFIG_HOME`), or
//! the file `--config` / `PALISADE_CONFIG` names. YAML:
//!
//! ```yaml
//! controller: controller.example:7443   # HOST:PORT, or a URL with http:// or https://
//! ca: certs/ca.pem                      # relative paths are relative to this file
//! cert: certs/operator-admin.pem
//! key: certs/operator-admin-key.pem
//! serverName: palisade-controller       # optional
//! insecure: false                       # optional: plaintext (a controller run --insecure)
//! ```
//!
//! A flag or its environment variable wins over the file, field by field.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::remote::Conn;
use crate::Error;

/// What the context file may say.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Context {
    pub controller: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub insecure: Option<bool>,
}

/// The controller when neither a flag, the environment nor the file names one.
pub const DEFAULT_CONTROLLER: &str = "127.0.0.1:7443";

/// The default context file: `$XDG_CONFIG_HOME/palisade/config`, else
/// `$HOME/.config/palisade/config`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("palisade").join("config"))
}

/// Read the context at `path` (named explicitly: it must exist), or at the default path
/// (when it exists).
pub fn load(path: Option<&Path>) -> Result<Context, Error> {
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => match default_path() {
            Some(p) => (p, false),
            None => return Ok(Context::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(Context::default())
        }
        Err(e) => return Err(Error::Read(path, e)),
    };
    let mut ctx: Context = serde_saphyr::from_str(&text).map_err(|e| {
        Error::Usage(format!(
            "{}: not a palisadectl context: {e}",
            path.display()
        ))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in [&mut ctx.ca, &mut ctx.cert, &mut ctx.key]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(ctx)
}

/// Flags (and their environment variables) over the context, field by field.
#[allow(clippy::too_many_arguments)]
pub fn merge(
    ctx: Context,
    controller: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
    insecure: Option<bool>,
) -> Conn {
    Conn {
        controller: controller
            .or(ctx.controller)
            .unwrap_or_else(|| DEFAULT_CONTROLLER.to_string()),
        ca: ca.or(ctx.ca),
        cert: cert.or(ctx.cert),
        key: key.or(ctx.key),
        server_name: server_name.or(ctx.server_name),
        insecure: insecure.or(ctx.insecure).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "controller: c.example:7443\nca: certs/ca.pem\ncert: /abs/op.pem\nkey: k.pem\n",
        )
        .unwrap();
        let ctx = load(Some(&path)).unwrap();
        let conn = merge(
            ctx,
            None,
            None,
            None,
            Some("/flag/k.pem".into()),
            None,
            None,
        );
        assert_eq!(conn.controller, "c.example:7443");
        assert_eq!(conn.ca, Some(dir.path().join("certs/ca.pem")));
        assert_eq!(conn.cert, Some(PathBuf::from("/abs/op.pem")));
        assert_eq!(conn.key, Some(PathBuf::from("/flag/k.pem")));
        let conn = merge(
            load(Some(&path)).unwrap(),
            Some("x:1".into()),
            None,
            None,
            None,
            None,
            None,
        );
        assert_eq!(conn.controller, "x:1");
        // `insecure: true` in the file, `--insecure=false` on the command line.
        std::fs::write(&path, "controller: c:1\ninsecure: true\n").unwrap();
        let file_only = merge(
            load(Some(&path)).unwrap(),
            None,
            None,
            None,
            None,
            None,
            None,
        );
        assert!(file_only.insecure);
        let flag = merge(
            load(Some(&path)).unwrap(),
            None,
            None,
            None,
            None,
            None,
            Some(false),
        );
        assert!(!flag.insecure);
    }

    #[test]
    fn a_named_file_must_exist_and_be_valid() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(load(Some(&missing))
            .unwrap_err()
            .to_string()
            .contains("nope"));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "controler: x:1\n").unwrap();
        let err = load(Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("controler"), "{err}");
    }
}

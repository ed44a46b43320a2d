//! The commands, one module each (its arguments and what it does), and what several share:
//! the manifests read, how to reach a running controller, the exit status.

pub mod certs;
pub mod change;
pub mod completion;
pub mod demo;
pub mod evaluate;
pub mod explain;
pub mod get;
pub mod lint;
pub mod node;
pub mod nodes;
pub mod rejected;
pub mod replicas;
pub mod slice;
pub mod version;
pub mod wait;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use palisadectl::remote;

#[derive(clap::Args)]
pub struct Manifests {
    /// Manifest file or directory (YAML or JSON; multi-document files and `kind: List` are
    /// read; directories are read recursively). Repeat for several; `-` reads stdin.
    /// Namespaces, Pods (spec.nodeName, status.podIP(s), container ports) and
    /// NetworkPolicies are used; other kinds are ignored.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<PathBuf>,

    /// Namespace of objects whose metadata names none (kubectl's -n filters output here).
    #[arg(
        long,
        value_name = "NAMESPACE",
        default_value = "default",
        env = "PALISADE_DEFAULT_NAMESPACE"
    )]
    pub default_namespace: String,
}

/// How to reach a running controller: flags, their environment variables, then the context
/// file (`~/.config/palisade/config`), field by field.
#[derive(clap::Args)]
pub struct ConnArgs {
    /// The context file (YAML: controller, ca, cert, key, serverName, insecure; relative
    /// paths are relative to it). Default: ~/.config/palisade/config when it exists.
    #[arg(long, env = "PALISADE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// The controller: HOST:PORT, or a URL with http:// (plaintext) or https://
    /// [default: the context's, else 127.0.0.1:7443].
    #[arg(long, env = "PALISADE_CONTROLLER")]
    controller: Option<String>,
    /// CA certificate (PEM) that signed the controller's certificate.
    #[arg(long, env = "PALISADE_CA")]
    ca: Option<PathBuf>,
    /// Operator certificate (PEM), e.g. from `palisadectl certs`.
    #[arg(long, env = "PALISADE_OPERATOR_CERT")]
    cert: Option<PathBuf>,
    /// Operator private key (PEM).
    #[arg(long, env = "PALISADE_OPERATOR_KEY")]
    key: Option<PathBuf>,
    /// Name to verify the controller's certificate against (default: the address's host).
    #[arg(long, env = "PALISADE_TLS_SERVER_NAME")]
    server_name: Option<String>,
    /// Plaintext (a controller run with --insecure); --insecure=false overrides the context.
    #[arg(long, env = "PALISADE_INSECURE", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    insecure: Option<bool>,
}

impl ConnArgs {
    pub fn conn(self) -> Result<remote::Conn> {
        let ctx = palisadectl::config::load(self.config.as_deref())?;
        Ok(palisadectl::config::merge(
            ctx,
            self.controller,
            self.ca,
            self.cert,
            self.key,
            self.server_name,
            self.insecure,
        ))
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// What a command found, as its exit status: the OR of 3 (a negative answer), 4 (objects
/// rejected) and 8 (lint findings under --strict); 0 when none holds.
#[derive(Default)]
pub struct Outcome {
    pub negative: bool,
    pub rejected: bool,
    pub findings: bool,
}

impl Outcome {
    pub fn code(&self) -> ExitCode {
        let mut code = 0u8;
        if self.negative {
            code |= 3;
        }
        if self.rejected {
            code |= 4;
        }
        if self.findings {
            code |= 8;
        }
        ExitCode::from(code)
    }
}

pub fn exit(rejected: bool, negative: bool) -> ExitCode {
    Outcome {
        negative,
        rejected,
        findings: false,
    }
    .code()
}

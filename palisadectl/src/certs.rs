//! `palisadectl certs`: a CA and the certificates a local Palisade needs (controller, one per
//! replica of a group, one per node, operators), for development and tests. Identities are
//! URI SANs (`palisade://node/NAME`, `palisade://operator/NAME`, `palisade://controller`,
//! `palisade://replica/N`); controller and replica certificates also name the hosts agents
//! and peers dial.
//!
//! Run again to add nodes or operators: files that exist are kept (the CA is reused), so
//! adding a node never re-mints the controller's or an operator's certificate; `--renew`
//! replaces the ones named. Keys are created with mode 0600, atomically. Certificates are
//! valid for `--valid-for` (one year by default), a new CA for ten years at least.

use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_files::atomic;

use palisade_proto::identity;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("'{0}' is not a valid name for a certificate: {1}")]
    Name(String, String),
}

/// What to mint.
pub struct Request<'a> {
    pub dir: &'a Path,
    /// DNS names and IP addresses the controller is reached at.
    pub hosts: &'a [String],
    pub nodes: &'a [String],
    pub operators: &'a [String],
    /// Replica ids of a Raft group to mint `replica-N` certificates for (server and client:
    /// a replica serves agents and operators, and calls its peers).
    pub replicas: &'a [u64],
    /// How long new leaf certificates are valid.
    pub valid_for: Duration,
    /// Replace the requested certificates that exist (the CA is always kept).
    pub renew: bool,
}

/// What [`mint`] did.
#[derive(Debug, Default)]
pub struct Minted {
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Certificates that existed and were kept (their `.pem`).
    pub kept: Vec<PathBuf>,
}

/// How long leaf certificates are valid unless told otherwise: one year.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A new CA is valid this long at least.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn write(path: PathBuf, content: &str, private: bool) -> Result<PathBuf, CertError> {
    let result = if private {
        atomic::write_private(&path, content.as_bytes())
    } else {
        atomic::write(&path, content.as_bytes())
    };
    result.map_err(|e| CertError::Io(path.clone(), e))?;
    Ok(path)
}

/// From five minutes ago (clocks differ) until `valid_for` from now.
fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + valid_for;
}

fn ia5(s: String) -> Result<rcgen::string::Ia5String, CertError> {
    s.clone()
        .try_into()
        .map_err(|e: rcgen::Error| CertError::Name(s, e.to_string()))
}

/// The CA in `dir` (reused when present, so more certificates can be added later), or a new one.
fn ca(
    dir: &Path,
    valid_for: Duration,
    written: &mut Vec<PathBuf>,
) -> Result<Issuer<'static, KeyPair>, CertError> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.exists() != key_path.exists() {
        // A new CA would not sign the certificates kept beside it: they would stop chaining.
        let (here, missing) = if cert_path.exists() {
            (&cert_path, &key_path)
        } else {
            (&key_path, &cert_path)
        };
        return Err(CertError::Io(
            missing.clone(),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} exists without it: restore it, or use a new --dir (a new CA would not sign the certificates already there)",
                    here.display()
                ),
            ),
        ));
    }
    if cert_path.exists() && key_path.exists() {
        let read =
            |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| CertError::Io(p.clone(), e));
        let key = KeyPair::from_pem(&read(&key_path)?)?;
        return Ok(Issuer::from_ca_cert_pem(&read(&cert_path)?, key)?);
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Palisade local CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, valid_for.max(CA_VALIDITY));
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    written.push(write(cert_path, &cert.pem(), false)?);
    written.push(write(key_path, &key.serialize_pem(), true)?);
    Ok(Issuer::new(params, key))
}

/// Where leaves go and how they are made.
struct Minter<'a> {
    issuer: Issuer<'static, KeyPair>,
    req: &'a Request<'a>,
    out: Minted,
    progress: indicatif::ProgressBar,
}

impl Minter<'_> {
    /// `file`.pem and `file`-key.pem, unless both exist and `--renew` was not given.
    fn leaf(
        &mut self,
        file: &str,
        common_name: &str,
        sans: Vec<SanType>,
        usage: &[ExtendedKeyUsagePurpose],
    ) -> Result<(), CertError> {
        self.progress.inc(1);
        let dir = self.req.dir;
        let (cert, key) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}-key.pem")),
        );
        if !self.req.renew && cert.exists() && key.exists() {
            self.out.kept.push(cert);
            return Ok(());
        }
        let (c, k) = leaf(&self.issuer, self.req.valid_for, common_name, sans, usage)?;
        // The key first: a certificate is never left beside another certificate's key.
        self.out.written.push(write(key, &k, true)?);
        self.out.written.push(write(cert, &c, false)?);
        Ok(())
    }
}

/// A leaf certificate and its key, as PEM.
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    valid_for: Duration,
    common_name: &str,
    sans: Vec<SanType>,
    usage: &[ExtendedKeyUsagePurpose],
) -> Result<(String, String), CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usage.to_vec();
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, valid_for);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Write the CA (unless present) and the requested certificates (those missing, or all
/// of them with `renew`); says what it wrote and what it kept. A progress bar shows on a
/// terminal when there are many.
pub fn mint(req: &Request) -> Result<Minted, CertError> {
    std::fs::create_dir_all(req.dir).map_err(|e| CertError::Io(req.dir.to_path_buf(), e))?;
    let mut written = Vec::new();
    let issuer = ca(req.dir, req.valid_for, &mut written)?;
    let total = 1 + req.replicas.len() + req.nodes.len() + req.operators.len();
    let progress = if total >= 20 {
        indicatif::ProgressBar::new(total as u64).with_message("certificates")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut m = Minter {
        issuer,
        req,
        out: Minted {
            written,
            kept: Vec::new(),
        },
        progress,
    };
    let mut hosts = Vec::new();
    for h in req.hosts {
        hosts.push(match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(ia5(h.clone())?),
        });
    }
    hosts.push(SanType::URI(ia5(identity::CONTROLLER.to_string())?));
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    for r in req.replicas {
        let mut san = hosts.clone();
        san.push(SanType::URI(ia5(identity::replica_uri(*r))?));
        m.leaf(
            &format!("replica-{r}"),
            &format!("palisade-controller replica {r}"),
            san,
            &[ServerAuth, ClientAuth],
        )?;
    }
    m.leaf(
        "controller",
        "palisade-controller",
        hosts,
        &[ServerAuth, ClientAuth],
    )?;
    for n in req.nodes {
        let san = vec![SanType::URI(ia5(identity::node_uri(n))?)];
        m.leaf(
            &format!("node-{n}"),
            &format!("node {n}"),
            san,
            &[ClientAuth],
        )?;
    }
    for o in req.operators {
        let san = vec![SanType::URI(ia5(identity::operator_uri(o))?)];
        m.leaf(
            &format!("operator-{o}"),
            &format!("operator {o}"),
            san,
            &[ClientAuth],
        )?;
    }
    m.progress.finish_and_clear();
    Ok(m.out)
}

/// `palisade-controller`'s TLS flags for replica `id`, with the files [`mint`] wrote into
/// `dir` (`--tls-ca`, `--tls-cert`, `--tls-key` and their paths).
pub fn replica_flags(dir: &Path, id: u64) -> [std::ffi::OsString; 6] {
    [
        "--tls-ca".into(),
        dir.join("ca.pem").into(),
        "--tls-cert".into(),
        dir.join(format!("replica-{id}.pem")).into(),
        "--tls-key".into(),
        dir.join(format!("replica-{id}-key.pem")).into(),
    ]
}

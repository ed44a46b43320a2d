//! `palisadectl certs`: a CA and the certificates a local Palisade needs (controller, one per
//! replica of a group, one per node, operators), for development and tests. Identities are
//! URI SANs (`palisade://node/NAME`, `palisade://operator/NAME`, `palisade://controller`,
//! `palisade://replica/N`); controller and replica certificates also name the hosts agents
//! and peers dial.

use std::path::{Path, PathBuf};

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
}

fn write(path: PathBuf, content: &str, private: bool) -> Result<PathBuf, CertError> {
    std::fs::write(&path, content).map_err(|e| CertError::Io(path.clone(), e))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| CertError::Io(path.clone(), e))?;
    }
    Ok(path)
}

fn ia5(s: String) -> Result<rcgen::string::Ia5String, CertError> {
    s.clone()
        .try_into()
        .map_err(|e: rcgen::Error| CertError::Name(s, e.to_string()))
}

/// The CA in `dir` (reused when present, so more certificates can be added later), or a new one.
fn ca(dir: &Path, written: &mut Vec<PathBuf>) -> Result<Issuer<'static, KeyPair>, CertError> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
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
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    written.push(write(cert_path, &cert.pem(), false)?);
    written.push(write(key_path, &key.serialize_pem(), true)?);
    Ok(Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    dir: &Path,
    file: &str,
    common_name: &str,
    sans: Vec<SanType>,
    usage: &[ExtendedKeyUsagePurpose],
    written: &mut Vec<PathBuf>,
) -> Result<(), CertError> {
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
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    written.push(write(dir.join(format!("{file}.pem")), &cert.pem(), false)?);
    written.push(write(
        dir.join(format!("{file}-key.pem")),
        &key.serialize_pem(),
        true,
    )?);
    Ok(())
}

/// Write the CA (unless present) and the requested certificates; returns the files written.
pub fn mint(req: &Request) -> Result<Vec<PathBuf>, CertError> {
    std::fs::create_dir_all(req.dir).map_err(|e| CertError::Io(req.dir.to_path_buf(), e))?;
    let mut written = Vec::new();
    let issuer = ca(req.dir, &mut written)?;
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
        leaf(
            &issuer,
            req.dir,
            &format!("replica-{r}"),
            &format!("palisade-controller replica {r}"),
            san,
            &[ServerAuth, ClientAuth],
            &mut written,
        )?;
    }
    leaf(
        &issuer,
        req.dir,
        "controller",
        "palisade-controller",
        hosts,
        &[ServerAuth, ClientAuth],
        &mut written,
    )?;
    for n in req.nodes {
        let san = vec![SanType::URI(ia5(identity::node_uri(n))?)];
        leaf(
            &issuer,
            req.dir,
            &format!("node-{n}"),
            &format!("node {n}"),
            san,
            &[ClientAuth],
            &mut written,
        )?;
    }
    for o in req.operators {
        let san = vec![SanType::URI(ia5(identity::operator_uri(o))?)];
        leaf(
            &issuer,
            req.dir,
            &format!("operator-{o}"),
            &format!("operator {o}"),
            san,
            &[ClientAuth],
            &mut written,
        )?;
    }
    Ok(written)
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

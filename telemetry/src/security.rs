//! Whether a binary runs with authentication, decided once from the flags the user gave:
//! mTLS unless `--insecure` is given (and then no certificate may be), plaintext only toward
//! or on loopback addresses unless `--insecure-allow-remote` says otherwise. No default ever
//! turns authentication off: a variable such as `PALISADE_INSECURE=false` parses as false
//! (see the binaries' flags: booleans take `true` or `false`, anything else is an error).

use std::path::PathBuf;

/// The security flags of a binary, as parsed.
#[derive(Clone, Debug, Default)]
pub struct TlsFlags {
    pub insecure: bool,
    pub allow_remote: bool,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The CA, certificate and key files of mTLS.
pub type TlsPaths = (PathBuf, PathBuf, PathBuf);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    #[error("authentication is on unless --insecure is given: {0} missing (give --tls-ca, --tls-cert and --tls-key; `palisadectl certs` makes them)")]
    MissingTls(String),
    #[error("--insecure turns authentication off, yet {0} given: use one or the other")]
    Conflict(String),
    #[error("--insecure-allow-remote is only meaningful with --insecure")]
    AllowRemoteAlone,
    #[error("--insecure would use plaintext with {0}, which is not a loopback address: anyone on that network could read or change policy. Use 127.0.0.1 or ::1, or add --insecure-allow-remote (test networks only)")]
    Remote(String),
}

/// The TLS files to use (`None`: plaintext, as the user asked), or why the flags are refused.
/// `addrs` are the addresses plaintext would be spoken on (listeners, or the servers a
/// client reaches), as `HOST:PORT` or URLs.
pub fn tls_choice(
    flags: TlsFlags,
    addrs: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<Option<TlsPaths>, SecurityError> {
    let given: Vec<&str> = [
        ("--tls-ca", flags.ca.is_some()),
        ("--tls-cert", flags.cert.is_some()),
        ("--tls-key", flags.key.is_some()),
    ]
    .into_iter()
    .filter(|(_, g)| *g == flags.insecure)
    .map(|(name, _)| name)
    .collect();
    if !flags.insecure {
        if flags.allow_remote {
            return Err(SecurityError::AllowRemoteAlone);
        }
        return match (flags.ca, flags.cert, flags.key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some((ca, cert, key))),
            _ => Err(SecurityError::MissingTls(given.join(", "))),
        };
    }
    if !given.is_empty() {
        return Err(SecurityError::Conflict(given.join(", ")));
    }
    if !flags.allow_remote {
        if let Some(a) = addrs.into_iter().find(|a| !is_loopback(a.as_ref())) {
            return Err(SecurityError::Remote(a.as_ref().to_string()));
        }
    }
    Ok(None)
}

/// Whether `addr` (`HOST:PORT`, `[V6]:PORT`, a bare host, or a URL) names a loopback host:
/// an address in 127.0.0.0/8, `::1`, or `localhost`.
pub fn is_loopback(addr: &str) -> bool {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.contains('@') {
        // `http://127.0.0.1:1@10.0.0.5:7443` reaches 10.0.0.5: userinfo is never loopback.
        return false;
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else if authority.matches(':').count() == 1 {
        authority.split(':').next().unwrap_or(authority)
    } else {
        authority
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(insecure: bool, remote: bool, tls: [bool; 3]) -> TlsFlags {
        let p = |on: bool, n: &str| on.then(|| PathBuf::from(n));
        TlsFlags {
            insecure,
            allow_remote: remote,
            ca: p(tls[0], "ca"),
            cert: p(tls[1], "cert"),
            key: p(tls[2], "key"),
        }
    }

    #[test]
    fn authentication_is_on_unless_asked_off() {
        let local = ["127.0.0.1:7443"];
        assert!(tls_choice(flags(false, false, [true; 3]), local)
            .unwrap()
            .is_some());
        assert_eq!(
            tls_choice(flags(false, false, [true, false, false]), local),
            Err(SecurityError::MissingTls("--tls-cert, --tls-key".into()))
        );
        assert_eq!(
            tls_choice(flags(false, true, [true; 3]), local),
            Err(SecurityError::AllowRemoteAlone)
        );
        assert_eq!(
            tls_choice(flags(true, false, [false, true, false]), local),
            Err(SecurityError::Conflict("--tls-cert".into()))
        );
        assert_eq!(tls_choice(flags(true, false, [false; 3]), local), Ok(None));
    }

    #[test]
    fn plaintext_stays_on_loopback_unless_allowed() {
        for a in [
            "127.0.0.1:1",
            "127.1.2.3:9",
            "[::1]:7443",
            "localhost:7443",
            "http://127.0.0.1:7443",
            "http://[::1]:80/x",
            "::1",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "0.0.0.0:7443",
            "10.0.0.1:7443",
            "[::]:1",
            "http://10.1.0.1:7443",
            "controller:7443",
            "localhost.example:1",
            "http://127.0.0.1:1@10.0.0.5:7443",
        ] {
            assert!(!is_loopback(a), "{a}");
            assert_eq!(
                tls_choice(flags(true, false, [false; 3]), [a]),
                Err(SecurityError::Remote(a.into()))
            );
            assert_eq!(tls_choice(flags(true, true, [false; 3]), [a]), Ok(None));
        }
    }
}

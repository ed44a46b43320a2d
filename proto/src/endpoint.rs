//! The one way Palisade's clients (the agent, `palisadectl`, the load test) turn a controller
//! address and TLS material into a tonic [`Endpoint`], so they accept the same addresses and
//! refuse the same mistakes:
//!
//! * `HOST:PORT`: `https://` with TLS material, `http://` without;
//! * `https://…` needs TLS material; `http://…` with TLS material is refused (it would
//!   silently drop the certificates and talk plaintext);
//! * any other scheme is refused.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// mTLS material, PEM.
#[derive(Clone)]
pub struct ClientTls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// Name to verify the controller's certificate against (default: the address's host).
    pub domain: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("bad controller address '{address}': {reason}")]
    Address { address: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
}

/// Connection behaviour.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub connect_timeout: Duration,
    /// HTTP/2 and TCP keepalives this often (dead peers are noticed after twice this); `None`
    /// for short-lived clients.
    pub keepalive: Option<Duration>,
}

/// The endpoint for `address`, with `tls` (`None`: plaintext).
pub fn endpoint(
    address: &str,
    tls: Option<&ClientTls>,
    options: Options,
) -> Result<Endpoint, EndpointError> {
    let bad = |reason: String| EndpointError::Address {
        address: address.to_string(),
        reason,
    };
    let url = match address.split_once("://") {
        Some(("https", _)) if tls.is_none() => {
            return Err(bad(
                "https:// without TLS material: give the CA, certificate and key, or use http:// with --insecure".into(),
            ))
        }
        Some(("https", _)) => address.to_string(),
        Some(("http", _)) if tls.is_some() => {
            return Err(bad(
                "http:// with TLS configured: use https:// or drop the scheme".into(),
            ))
        }
        Some(("http", _)) => address.to_string(),
        Some((scheme, _)) => {
            return Err(bad(format!(
                "unsupported scheme {scheme}://: use HOST:PORT, http:// or https://"
            )))
        }
        None => format!("{}://{address}", if tls.is_some() { "https" } else { "http" }),
    };
    let mut ep = Endpoint::from_shared(url)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(options.connect_timeout);
    if let Some(k) = options.keepalive {
        ep = ep
            .http2_keep_alive_interval(k)
            .keep_alive_timeout(k * 2)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(k));
    }
    if let Some(t) = tls {
        let mut tc = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&t.ca))
            .identity(Identity::from_pem(&t.cert, &t.key));
        if let Some(d) = &t.domain {
            tc = tc.domain_name(d.clone());
        }
        ep = ep
            .tls_config(tc)
            .map_err(|e| EndpointError::Tls(crate::error_chain(&e)))?;
    }
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: Options = Options {
        connect_timeout: Duration::from_secs(1),
        keepalive: None,
    };

    fn tls() -> ClientTls {
        ClientTls {
            ca: vec![],
            cert: vec![],
            key: vec![],
            domain: None,
        }
    }

    #[test]
    fn schemes_and_tls_agree_or_are_refused() {
        assert!(endpoint("127.0.0.1:7443", None, OPTS).is_ok());
        assert_eq!(
            endpoint("127.0.0.1:7443", None, OPTS)
                .unwrap()
                .uri()
                .scheme_str(),
            Some("http")
        );
        assert!(endpoint("http://h:1", None, OPTS).is_ok());
        let err = endpoint("http://h:1", Some(&tls()), OPTS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("http:// with TLS"), "{err}");
        let err = endpoint("https://h:1", None, OPTS).unwrap_err().to_string();
        assert!(err.contains("https:// without TLS"), "{err}");
        let err = endpoint("ftp://h:1", None, OPTS).unwrap_err().to_string();
        assert!(err.contains("ftp://"), "{err}");
    }
}

//! Accepting connections without letting anyone exhaust them (DESIGN.md contract 10, bounded
//! resources): every connection holds one of `max_connections` slots (and one of
//! `max_per_ip` of its source address); a TLS handshake must finish within
//! `handshake_timeout`; when a limit is reached, the oldest connection still handshaking (of
//! that address, for the per-address limit) is dropped to make room, and only when none is
//! handshaking is the new one refused. So idle sockets and stalled handshakes cannot keep a
//! legitimate agent out, and the accept loop never spins on `EMFILE`. Handshake failures are
//! logged with their reason (rate-limited) and counted.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::warn;

use crate::metrics::Metrics;

/// Bounds on connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub handshake_timeout: Duration,
    /// TCP keepalive on accepted connections.
    pub tcp_keepalive: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 16_384,
            max_per_ip: 1024,
            handshake_timeout: Duration::from_secs(10),
            tcp_keepalive: Some(Duration::from_secs(10)),
        }
    }
}

/// Raise this process's open-file limit to its hard limit, and return the connection limit it
/// allows: `wanted`, or fewer, leaving room for everything else the controller opens.
pub fn fit_to_file_limit(wanted: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    let room = (lim.rlim_cur as usize).saturating_sub(256).max(64);
    wanted.min(room)
}

/// A connection that holds its slots until it is dropped.
pub struct Counted<S> {
    inner: S,
    _slot: Slot,
}

impl<S: Connected> Connected for Counted<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Open connections, per address, and those still handshaking (oldest first).
#[derive(Default)]
struct Table {
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// id -> (address, how to drop it)
    handshaking: BTreeMap<u64, (IpAddr, CancellationToken)>,
    next: u64,
}

/// One connection's place in the table, given back when dropped.
struct Slot {
    table: Arc<Mutex<Table>>,
    ip: IpAddr,
    metrics: Metrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().expect("connection table");
        t.open -= 1;
        if let Some(n) = t.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.per_ip.remove(&self.ip);
            }
        }
        self.metrics.connections(t.open);
    }
}

/// At most `per_second` log lines a second; the rest are counted and said later.
struct RateLimited {
    per_second: u32,
    window: Mutex<(Instant, u32, u64)>,
}

impl RateLimited {
    fn new(per_second: u32) -> RateLimited {
        RateLimited {
            per_second,
            window: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// Whether to log now, and how many were suppressed before.
    fn allow(&self) -> Option<u64> {
        let mut w = self.window.lock().expect("rate limiter");
        if w.0.elapsed() >= Duration::from_secs(1) {
            *w = (Instant::now(), 0, w.2);
        }
        if w.1 >= self.per_second {
            w.2 += 1;
            return None;
        }
        w.1 += 1;
        Some(std::mem::take(&mut w.2))
    }
}

struct Acceptor {
    table: Arc<Mutex<Table>>,
    limits: Limits,
    metrics: Metrics,
    log: Arc<RateLimited>,
}

impl Acceptor {
    /// Take a slot for a connection from `ip`, making room by dropping the oldest handshake
    /// when a limit is reached. `None`: no room (the connection is refused).
    fn admit(&self, ip: IpAddr) -> Option<(Slot, u64, CancellationToken)> {
        let mut t = self.table.lock().expect("connection table");
        let over_ip = t.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_ip;
        let over_all = t.open >= self.limits.max_connections;
        if over_ip || over_all {
            let victim = t
                .handshaking
                .iter()
                .find(|(_, (vip, _))| !over_ip || *vip == ip)
                .map(|(id, _)| *id)?;
            let (_, token) = t.handshaking.remove(&victim).expect("found");
            // Its task ends at once and gives its slot back; until then the count is one over.
            token.cancel();
            self.metrics.connection_evicted();
        }
        t.open += 1;
        *t.per_ip.entry(ip).or_default() += 1;
        t.next += 1;
        let id = t.next;
        let token = CancellationToken::new();
        t.handshaking.insert(id, (ip, token.clone()));
        self.metrics.connections(t.open);
        Some((
            Slot {
                table: self.table.clone(),
                ip,
                metrics: self.metrics.clone(),
            },
            id,
            token,
        ))
    }

    /// The handshake of `id` ended; false when the connection was evicted meanwhile (it
    /// must then be dropped: its place was given to another).
    fn established(&self, id: u64) -> bool {
        self.table
            .lock()
            .expect("connection table")
            .handshaking
            .remove(&id)
            .is_some()
    }

    fn failed(&self, peer: SocketAddr, reason: &'static str, detail: &str) {
        self.metrics.tls_failure(reason);
        if let Some(suppressed) = self.log.allow() {
            if suppressed > 0 {
                warn!(%peer, reason, detail, suppressed, "connection dropped before serving (and {suppressed} more not logged)");
            } else {
                warn!(%peer, reason, detail, "connection dropped before serving");
            }
        }
    }
}

/// Connections from `listener`, TLS-terminated with `tls` (`None`: plaintext), within
/// `limits`, until `shutdown`.
pub fn incoming<S>(
    listener: TcpListener,
    handshake: impl Fn(TcpStream) -> Handshake<S> + Send + Sync + 'static,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> ReceiverStream<std::io::Result<Counted<S>>>
where
    S: Send + 'static,
{
    let (tx, rx) = mpsc::channel(256);
    let acceptor = Arc::new(Acceptor {
        table: Arc::default(),
        limits,
        metrics,
        log: Arc::new(RateLimited::new(10)),
    });
    tokio::spawn(async move {
        let handshake = Arc::new(handshake);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or similar: wait a moment instead of spinning.
                    acceptor.failed(
                        "0.0.0.0:0".parse().expect("an address"),
                        "accept",
                        &e.to_string(),
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if let Some(k) = acceptor.limits.tcp_keepalive {
                let keepalive = socket2::TcpKeepalive::new().with_time(k).with_interval(k);
                let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            }
            let Some((slot, id, evict)) = acceptor.admit(peer.ip()) else {
                acceptor.metrics.connection_refused();
                acceptor.failed(
                    peer,
                    "refused",
                    "connection limit reached and no handshake to evict",
                );
                drop(tcp);
                continue;
            };
            let acceptor = acceptor.clone();
            let handshake = handshake.clone();
            let tx = tx.clone();
            let timeout = acceptor.limits.handshake_timeout;
            tokio::spawn(async move {
                let result = tokio::select! {
                    _ = evict.cancelled() => Err(("evicted", "dropped to make room for a newer connection".to_string())),
                    r = tokio::time::timeout(timeout, handshake(tcp)) => match r {
                        Err(_) => Err(("timeout", format!("no complete TLS handshake within {}", humantime::format_duration(timeout)))),
                        Ok(Err(e)) => Err(("handshake", e.to_string())),
                        Ok(Ok(s)) => Ok(s),
                    },
                };
                let kept = acceptor.established(id);
                let result = match result {
                    Ok(_) if !kept => Err((
                        "evicted",
                        "dropped to make room for a newer connection".to_string(),
                    )),
                    other => other,
                };
                match result {
                    Ok(inner) => {
                        let _ = tx.send(Ok(Counted { inner, _slot: slot })).await;
                    }
                    Err((reason, detail)) => acceptor.failed(peer, reason, &detail),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A connection's handshake (TLS, or nothing for plaintext).
pub type Handshake<S> =
    Pin<Box<dyn std::future::Future<Output = std::io::Result<S>> + Send + 'static>>;

/// The TLS handshake with `config`.
pub fn tls(
    config: Arc<rustls::ServerConfig>,
) -> impl Fn(TcpStream) -> Handshake<tokio_rustls::server::TlsStream<TcpStream>> + Send + Sync + 'static
{
    let acceptor = TlsAcceptor::from(config);
    move |tcp| {
        let acceptor = acceptor.clone();
        Box::pin(async move { acceptor.accept(tcp).await })
    }
}

/// No handshake (plaintext, development only).
pub fn plain() -> impl Fn(TcpStream) -> Handshake<TcpStream> + Send + Sync + 'static {
    |tcp| Box::pin(async move { Ok(tcp) })
}

/// The server side of mTLS: `cert` and `key` (PEM) for the controller, client certificates
/// required and checked against `ca`; HTTP/2 by ALPN.
pub fn server_config(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        let c = c.map_err(|e| format!("CA certificate: {e}"))?;
        roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("private key: {e}"))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acceptor(max_connections: usize, max_per_ip: usize) -> Acceptor {
        Acceptor {
            table: Arc::default(),
            limits: Limits {
                max_connections,
                max_per_ip,
                ..Limits::default()
            },
            metrics: Metrics::new(),
            log: Arc::new(RateLimited::new(10)),
        }
    }

    #[test]
    fn limits_evict_the_oldest_handshake_of_the_right_address() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // Per address: a third connection from a evicts a's oldest handshake, not b's.
        let acc = acceptor(100, 2);
        let (_s1, _, t1) = acc.admit(a).unwrap();
        let (_s2, _, t2) = acc.admit(b).unwrap();
        let (_s3, _, t3) = acc.admit(a).unwrap();
        let (_s4, _, _) = acc.admit(a).unwrap();
        assert!(t1.is_cancelled() && !t2.is_cancelled() && !t3.is_cancelled());
        // Overall: the oldest handshake of any address goes.
        let acc = acceptor(2, 100);
        let (_s1, id1, t1) = acc.admit(a).unwrap();
        let (_s2, _, t2) = acc.admit(b).unwrap();
        let (_s3, _, _) = acc.admit(b).unwrap();
        assert!(t1.is_cancelled() && !t2.is_cancelled());
        assert!(
            !acc.established(id1),
            "an evicted connection is dropped, never served"
        );
        // Established connections are never evicted: with no handshake left, refused.
        let acc = acceptor(1, 100);
        let (slot, id, _) = acc.admit(a).unwrap();
        assert!(acc.established(id));
        assert!(acc.admit(b).is_none());
        drop(slot);
        assert!(
            acc.admit(b).is_some(),
            "a closed connection gives its slot back"
        );
    }

    #[test]
    fn the_rate_limiter_counts_what_it_suppresses() {
        let r = RateLimited::new(2);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        r.window.lock().unwrap().0 -= Duration::from_secs(2);
        assert_eq!(r.allow(), Some(2));
    }
}

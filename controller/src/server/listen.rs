//! Accepting connections without letting anyone exhaust them (contracts.md §10, bounded
//! resources): the table's decisions are in [`super::conns`] (slots per address, per
//! certificate identity and overall; handshakes and idle connections dropped to make room;
//! slots kept for operators; idle connections closed); this is the async shell. A TLS
//! handshake must finish within `handshake_timeout`; the accept loop never spins on `EMFILE`.
//! Handshake failures and refusals are logged with their reason (rate-limited) and counted.

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

pub use super::conns::Limits;
use super::conns::{Refusal, Table, Who};

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

/// A connection that holds its slots until it is dropped, and ends (as if its peer had
/// closed it) when the table closes it.
pub struct Counted<S> {
    inner: S,
    _slot: Slot,
    closed: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl<S> Counted<S> {
    fn is_closed(&mut self, cx: &mut Context<'_>) -> bool {
        std::future::Future::poll(self.closed.as_mut(), cx).is_ready()
    }
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
        if self.is_closed(cx) {
            // End of stream: the server drops the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_closed(cx) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_closed(cx) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
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
        if self.is_closed(cx) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One connection's place in the table, given back when dropped.
struct Slot {
    table: Arc<Mutex<Table>>,
    id: u64,
    ip: IpAddr,
    metrics: Metrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().expect("connection table");
        t.release(self.id, self.ip);
        self.metrics.connections(t.open);
    }
}

/// Who a connection's peer is, once its handshake is done.
pub trait Peer {
    fn who(&self) -> Who;
}

impl Peer for tokio_rustls::server::TlsStream<TcpStream> {
    fn who(&self) -> Who {
        let leaf = self.get_ref().1.peer_certificates()?.first()?;
        crate::auth::identities(leaf.as_ref())
            .ok()?
            .into_iter()
            .next()
    }
}

/// Plaintext (development only): nobody is identified, everyone is allowed.
impl Peer for TcpStream {
    fn who(&self) -> Who {
        Some(crate::auth::Identity::Anonymous)
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
    fn count_evictions(&self, t: &mut Table) {
        for _ in 0..std::mem::take(&mut t.evicted) {
            self.metrics.connection_evicted();
        }
        self.metrics.connections(t.open);
    }

    /// Take a slot for a connection from `ip` (making room if a limit is reached).
    fn admit(&self, ip: IpAddr) -> Result<(Slot, u64, CancellationToken), Refusal> {
        let mut t = self.table.lock().expect("connection table");
        let admitted = t.admit(ip, &self.limits, Instant::now());
        self.count_evictions(&mut t);
        let a = admitted?;
        Ok((
            Slot {
                table: self.table.clone(),
                id: a.id,
                ip,
                metrics: self.metrics.clone(),
            },
            a.id,
            a.evict,
        ))
    }

    /// The handshake of `id` ended: the connection as the table keeps it, or why it is
    /// dropped.
    fn established(
        &self,
        id: u64,
        peer: SocketAddr,
        who: Who,
    ) -> Result<Arc<super::conns::Conn>, Refusal> {
        let mut t = self.table.lock().expect("connection table");
        let r = t.established(id, peer, who, &self.limits, Instant::now());
        self.count_evictions(&mut t);
        r
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
    table: Arc<Mutex<Table>>,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> ReceiverStream<std::io::Result<Counted<S>>>
where
    S: Peer + Send + 'static,
{
    let (tx, rx) = mpsc::channel(256);
    let acceptor = Arc::new(Acceptor {
        table,
        limits,
        metrics,
        log: Arc::new(RateLimited::new(10)),
    });
    // Idle connections (no request or stream in flight) are closed after the timeout.
    let reaper = acceptor.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let every = (reaper.limits.idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut t = reaper.table.lock().expect("connection table");
            let closed = t.close_idle(&reaper.limits, Instant::now());
            for _ in 0..closed {
                reaper.metrics.connection_idle_closed();
            }
        }
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
            let (slot, id, evict) = match acceptor.admit(peer.ip()) {
                Ok(a) => a,
                Err(why) => {
                    acceptor.metrics.connection_refused();
                    acceptor.failed(peer, why.reason(), why.detail());
                    drop(tcp);
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let handshake = handshake.clone();
            let tx = tx.clone();
            let timeout = acceptor.limits.handshake_timeout;
            tokio::spawn(async move {
                let result = tokio::select! {
                    _ = evict.cancelled() => Err((Refusal::Evicted.reason(), Refusal::Evicted.detail().to_string())),
                    r = tokio::time::timeout(timeout, handshake(tcp)) => match r {
                        Err(_) => Err(("timeout", format!("no complete TLS handshake within {}", humantime::format_duration(timeout)))),
                        Ok(Err(e)) => Err(("handshake", e.to_string())),
                        Ok(Ok(s)) => Ok(s),
                    },
                };
                let result = result.and_then(|s| match acceptor.established(id, peer, s.who()) {
                    Ok(conn) => Ok((s, conn)),
                    Err(why) => {
                        if why != Refusal::Evicted {
                            acceptor.metrics.connection_refused();
                        }
                        Err((why.reason(), why.detail().to_string()))
                    }
                });
                match result {
                    Ok((inner, conn)) => {
                        let closed = Box::pin(conn.close.clone().cancelled_owned());
                        let _ = tx
                            .send(Ok(Counted {
                                inner,
                                _slot: slot,
                                closed,
                            }))
                            .await;
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

//! A TCP proxy in front of one replica: its listener is the replica's address for agents,
//! peers and operators. Cutting it closes the listener (new connections are refused) and
//! drops every connection through it, so the replica is partitioned from everyone reaching
//! it; healing it listens again on the same port. The bytes are copied, never read: TLS runs
//! end to end between the replica and its clients.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listen on a free loopback port below the ephemeral range (healing listens on it again,
    /// and no outgoing connection can have taken it meanwhile), forwarding to `target`.
    pub async fn start(target: String) -> std::io::Result<Proxy> {
        let lo = std::net::Ipv4Addr::LOCALHOST;
        let port = palisade_procs::free_port(lo.into())?;
        let listener = TcpListener::bind((lo, port)).await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let stop = CancellationToken::new();
        tokio::spawn(serve(Some(listener), addr, target, cut_rx, stop.clone()));
        Ok(Proxy { addr, cut, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    target: String,
    mut cut: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        // Healed: listen again (the port may linger a moment after the close).
        while !*cut.borrow_and_update() && listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                },
            }
        }
        let Some(l) = listener.take() else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = cut.changed() => continue,
            }
        };
        let connections = stop.child_token();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = cut.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *cut.borrow_and_update() {
                        break;
                    }
                }
                accepted = l.accept() => {
                    let Ok((inbound, _)) = accepted else { continue };
                    let target = target.clone();
                    let token = connections.clone();
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(&target).await else { return };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let (mut a, mut b) = (inbound, outbound);
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        }
                    });
                }
            }
        }
        // Cut: the listener closes and every connection through it drops.
        drop(l);
        connections.cancel();
    }
}

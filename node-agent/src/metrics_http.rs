//! The agent's metrics endpoint: a minimal HTTP/1.0 server (`GET /metrics`, anything else 404)
//! that nobody can tie up: at most `max_connections` at once (more are closed at once), and a
//! request must arrive, and the answer be taken, within `timeout`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Bounds on the endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 16,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Serve `render()` (run on a blocking thread) on `listener`, forever.
pub async fn serve<F>(listener: TcpListener, render: Arc<F>, limits: Limits)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            // Out of descriptors or similar: wait instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(sock); // busy: closed at once
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(limits.timeout, sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if request.starts_with("GET /metrics") {
                let body = tokio::task::spawn_blocking(move || render())
                    .await
                    .unwrap_or_default();
                ("200 OK", body)
            } else {
                ("404 Not Found", "only /metrics is here\n".to_string())
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = tokio::time::timeout(limits.timeout, async {
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(body.as_bytes()).await
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn idle_clients_cannot_tie_it_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 4,
            timeout: Duration::from_millis(300),
        };
        tokio::spawn(serve(listener, Arc::new(|| "x 1\n".to_string()), limits));
        // Four idle clients take every slot; a fifth is closed at once.
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // The idle ones are closed after the timeout, and a real request is then answered.
        for mut s in idle {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .expect("closed by the server");
            assert!(matches!(n, Ok(0) | Err(_)));
        }
        let answer = get(addr).await;
        assert!(
            answer.starts_with("HTTP/1.0 200") && answer.ends_with("x 1\n"),
            "{answer}"
        );
    }
}

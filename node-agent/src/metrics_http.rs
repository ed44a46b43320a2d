//! The agent's HTTP endpoint: a minimal HTTP/1.0 server that nobody can tie up: at most
//! `max_connections` at once (more are closed at once), and a request must arrive, and the
//! answer be taken, within `timeout`.
//!
//! * `GET /metrics`: [`Endpoints::metrics`] (OpenMetrics text).
//! * `GET /livez` (and `/healthz`): the process serves.
//! * `GET /readyz`: 200 while [`Endpoints::ready`] says so, else 503, with the reason.
//! * anything else: 404.

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

/// What the endpoint answers with.
pub struct Endpoints {
    /// The metrics text (run on a blocking thread) and its content type.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    pub content_type: &'static str,
    /// Ready or not, and why (one line per check).
    pub ready: Box<dyn Fn() -> (bool, String) + Send + Sync>,
}

/// The answer to one request line: status, content type, body.
fn answer(endpoints: &Endpoints, request: &str) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = request
        .strip_prefix("GET ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("");
    match path.split('?').next().unwrap_or("") {
        "/metrics" => ("200 OK", endpoints.content_type, (endpoints.metrics)()),
        "/livez" | "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => match (endpoints.ready)() {
            (true, why) => ("200 OK", TEXT, why + "readyz check passed\n"),
            (false, why) => (
                "503 Service Unavailable",
                TEXT,
                why + "readyz check failed\n",
            ),
        },
        _ => (
            "404 Not Found",
            TEXT,
            "not found: /metrics, /livez and /readyz are here\n".into(),
        ),
    }
}

/// Serve `endpoints` on `listener`, forever.
pub async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>, limits: Limits) {
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
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(limits.timeout, sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let Ok((status, content_type, body)) =
                tokio::task::spawn_blocking(move || answer(&endpoints, &request)).await
            else {
                return;
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
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
        get_path(addr, "/metrics").await
    }

    async fn get_path(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn endpoints(ready: bool) -> Arc<Endpoints> {
        Arc::new(Endpoints {
            metrics: Box::new(|| "x 1\n".to_string()),
            content_type: "text/test",
            ready: Box::new(move || (ready, "[+]checked\n".to_string())),
        })
    }

    #[tokio::test]
    async fn probes_and_content_type() {
        for ready in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, endpoints(ready), Limits::default()));
            let metrics = get(addr).await;
            assert!(metrics.contains("Content-Type: text/test\r\n"), "{metrics}");
            assert!(get_path(addr, "/livez").await.starts_with("HTTP/1.0 200"));
            let readyz = get_path(addr, "/readyz").await;
            let want = if ready {
                "HTTP/1.0 200"
            } else {
                "HTTP/1.0 503"
            };
            assert!(
                readyz.starts_with(want) && readyz.contains("[+]checked"),
                "{readyz}"
            );
            assert!(get_path(addr, "/nope").await.starts_with("HTTP/1.0 404"));
        }
    }

    #[tokio::test]
    async fn idle_clients_cannot_tie_it_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 4,
            timeout: Duration::from_millis(300),
        };
        tokio::spawn(serve(listener, endpoints(true), limits));
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

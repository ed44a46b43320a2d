//! A request layer counting, per connection, the requests and streams in flight (from its
//! start to the end of its response body, a stream's whole life), so the connection table
//! ([`super::conns`]) knows which connections are idle: HTTP/2 keepalive pings keep an idle
//! connection's socket busy, so idleness is told here, not from the bytes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::codegen::{http, Body, BoxFuture, Bytes, Service};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::conns::{Busy, Table};

/// The layer, over the listener's table.
#[derive(Clone)]
pub struct Activity {
    table: Arc<Mutex<Table>>,
}

impl Activity {
    pub fn new(table: Arc<Mutex<Table>>) -> Activity {
        Activity { table }
    }
}

impl<S> tower_layer::Layer<S> for Activity {
    type Service = Counting<S>;
    fn layer(&self, inner: S) -> Counting<S> {
        Counting {
            inner,
            table: self.table.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Counting<S> {
    inner: S,
    table: Arc<Mutex<Table>>,
}

/// The peer address of the connection a request came on.
fn peer<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()))
}

impl<S, B, R> Service<http::Request<B>> for Counting<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    R: Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<Counted<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let busy = peer(&req).and_then(|a| {
            let conn = self.table.lock().expect("connection table").by_addr(&a)?;
            Some(conn.begin())
        });
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|inner| Counted { inner, _busy: busy }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
pub struct Counted<R> {
    inner: R,
    _busy: Option<Busy>,
}

impl<R: Body + Unpin> Body for Counted<R> {
    type Data = R::Data;
    type Error = R::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

//! A bare hyper hello-world: the peer `benches/scripts/rest.sh` measures deployd's REST API
//! against (issue 13), so that every REST figure is a ratio to what hyper itself does on the
//! same machine in the same run.
//!
//! It is built like deployd's listener and nothing more: tokio's default multi-threaded
//! runtime, one task per connection, hyper's HTTP/1.1 server with keep-alive and
//! `TCP_NODELAY`, and a fixed 13-byte body. No router, no middleware, no store.
//!
//! `cargo run --release --example hello -- 127.0.0.1:8099` (the address is optional).

use std::convert::Infallible;

use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Where it listens without an argument.
const DEFAULT_ADDRESS: &str = "127.0.0.1:8099";

const BODY: &str = "Hello, World!";

async fn hello(_: Request<hyper::body::Incoming>) -> Result<Response<String>, Infallible> {
    // `String` is hyper's simplest body type (http-body implements it; no extra crate).
    Ok(Response::new(BODY.to_string()))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
    let listener = TcpListener::bind(&address).await?;
    println!("hello listening on http://{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        // The same choice as deployd's listener: whole responses, no waiting for an ACK.
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(hello));
            if let Err(error) = connection.await {
                eprintln!("connection: {error}");
            }
        });
    }
}

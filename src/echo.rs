//! A tiny HTTP/1.1 echo app for the demo: it answers every request with a JSON description of
//! what it received, so a person can see exactly which identity headers the sidecar added and
//! which it removed.
//!
//! It is deliberately minimal (keep-alive, `Content-Length` bodies; a chunked body closes the
//! connection after the answer) and is not used by the sidecar itself.

use std::net::SocketAddr;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 64 * 1024;

/// Serves forever on `addr`.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(error) = connection(stream).await {
                tracing::debug!(%error, "echo connection ended");
            }
        });
    }
}

async fn connection(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some((head_len, reply, body_len, keep)) = read_head(&mut stream, &mut buf).await?
        else {
            return Ok(());
        };
        // Skip the body (already partly buffered).
        let mut remaining = body_len.saturating_sub(buf.len() - head_len);
        buf.drain(..head_len + body_len.min(buf.len() - head_len));
        while remaining > 0 {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk[..remaining.min(8192)]).await?;
            if n == 0 {
                return Ok(());
            }
            remaining -= n;
        }
        let body = serde_json::to_vec_pretty(&reply).unwrap_or_default();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
            body.len() + 1,
            if keep { "" } else { "connection: close\r\n" }
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.write_all(b"\n").await?;
        if !keep {
            return Ok(());
        }
    }
}

/// Reads one request head; returns its length, the echo document, the body length and whether
/// the connection can be kept.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(usize, Value, usize, bool)>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => return Ok(Some(describe(&req, len))),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return Ok(None),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn describe(req: &httparse::Request<'_, '_>, head_len: usize) -> (usize, Value, usize, bool) {
    let mut headers = Map::new();
    let mut body_len = 0;
    let mut keep = true;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).into_owned();
        match name.as_str() {
            "content-length" => body_len = value.trim().parse().unwrap_or(0),
            "transfer-encoding" | "connection"
                if value.to_ascii_lowercase().contains("chunked")
                    || value.eq_ignore_ascii_case("close") =>
            {
                keep = false
            }
            _ => {}
        }
        headers.insert(name, Value::from(value));
    }
    let reply = json!({
        "app": "portcullis demo echo",
        "method": req.method.unwrap_or(""),
        "path": req.path.unwrap_or(""),
        "headers": headers,
    });
    (head_len, reply, body_len, keep)
}

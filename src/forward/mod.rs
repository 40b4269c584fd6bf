//! The plain-HTTP inbound engine: a lean HTTP/1.1 forwarder on tokio.
//!
//! A sidecar sits on every request of its pod, so this path is written for what it is: one
//! client connection, one app, HTTP/1.1. Per request it parses the head once (httparse,
//! borrowed, no header map), asks the [`Pipeline`], writes the app's request head with one
//! write and reads the answer with one read when it fits, reusing per-connection buffers and a
//! per-thread pool of app connections. The TLS listener keeps pingora ([`crate::proxy`]).
//!
//! What it enforces on the way (RFC 9112):
//! - a request with both `Content-Length` and `Transfer-Encoding`, a transfer coding other
//!   than `chunked`, differing `Content-Length`s, a missing or repeated `Host` (HTTP/1.1), or
//!   a request-target that is not a path is refused with 400 (501 for an unknown coding);
//! - chunked bodies are decoded strictly ([`chunked`]) and re-encoded, so the app never sees a
//!   caller's chunk framing; hop-by-hop headers, and those `Connection` names, are not passed on;
//! - `Expect: 100-continue` is answered by portcullis once the request is authorized;
//! - a head larger than `--max-header-bytes` gets 431; a head must arrive within 30 s, and an
//!   idle client connection is closed after 60 s;
//! - upgrades (WebSocket) are passed through once the app answers 101.

pub mod chunked;
mod pool;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::answer::{Answer, Rejection, json_body};
use crate::auth::Authorization;
use crate::config::Settings;
use crate::context::CONTEXT_HEADER;
use crate::pipeline::{Allowed, HeaderSink, Inbound, Pipeline};
use crate::proxy::InFlight;
use crate::rules::normalize_path;
use chunked::{Chunked, LAST_CHUNK, encode_chunk};
use pool::Pool;

/// Headers per message beyond which a request gets 431 (a response: 502).
const MAX_HEADERS: usize = 128;
/// The largest response head accepted from the app.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// How long an idle client connection is kept open between requests.
const CLIENT_IDLE: Duration = Duration::from_secs(60);
/// How long a request head may take to arrive once it has started.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Read size for bodies.
const BUF: usize = 16 * 1024;

/// The plain-HTTP engine: settings shared by every connection.
pub struct Forwarder {
    pipeline: Arc<Pipeline>,
    upstream: SocketAddr,
    upstream_host: String,
    connect_timeout: Duration,
    pool: Pool,
    in_flight: Arc<InFlight>,
}

impl Forwarder {
    pub fn new(settings: &Settings, pipeline: Arc<Pipeline>, in_flight: Arc<InFlight>) -> Self {
        Self {
            pipeline,
            upstream: settings.upstream,
            upstream_host: settings.upstream.to_string(),
            connect_timeout: settings.upstream_connect_timeout,
            pool: Pool::new(settings.upstream_pool_size, settings.upstream_idle_timeout),
            in_flight,
        }
    }

    /// Serves `listener` on `threads` threads, each with its own single-threaded runtime and
    /// pool, until `shutdown` turns true; then stops accepting and lets requests finish.
    pub fn start(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        threads: usize,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        for i in 0..threads {
            let listener = listener.try_clone()?;
            let this = self.clone();
            let shutdown = shutdown.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("inbound-{i}"))
                .spawn(move || runtime.block_on(this.accept_loop(listener, shutdown)))?;
        }
        Ok(())
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(error) => {
                tracing::error!(%error, "inbound listener unusable");
                return;
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Small writes are whole messages: never wait to coalesce them.
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(Conn::new(self.clone(), stream, peer, shutdown.clone()).serve());
                    }
                    Err(error) => {
                        // Out of descriptors and the like: say so, and do not spin.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
        // Requests in flight finish on their own tasks; the drain thread ends the process.
        std::future::pending::<()>().await;
    }
}

/// A byte buffer read into at the end and consumed from the front.
struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    fn new(capacity: usize) -> Self {
        Self {
            data: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once more into the buffer, growing it up to `limit` if it is full; returns the
    /// byte count (0 at end of stream). A full buffer at `limit` is an `OutOfMemory` error.
    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R, limit: usize) -> io::Result<usize> {
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < limit {
                let grown = (self.data.len() * 2).clamp(BUF, limit);
                self.data.resize(grown, 0);
            } else {
                return Err(io::ErrorKind::OutOfMemory.into());
            }
        }
        let n = r.read(&mut self.data[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body ends when the app closes the connection.
    UntilClose,
}

/// A request ready to go to the app, or why not.
struct Prepared {
    head_len: usize,
    is_head: bool,
    /// Whether the client may send another request on this connection.
    keep_alive: bool,
    http10: bool,
    body: Framing,
    upgrade: bool,
    expect_continue: bool,
    outcome: Result<Allowed, Refusal>,
}

/// A request that does not reach the app.
enum Refusal {
    /// Refused by the pipeline: counted and logged as a decision; method and path for the log.
    Decision(Rejection, String, String),
    /// Not a valid HTTP/1.1 request: status and description.
    Protocol(u16, &'static str),
}

/// Writes identity headers straight into the app's request head.
struct HeadSink<'a>(&'a mut Vec<u8>);

impl HeaderSink for HeadSink<'_> {
    fn add(&mut self, name: &str, value: &str) {
        push_header(self.0, name.as_bytes(), value.as_bytes());
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// One client connection and its reusable buffers.
struct Conn {
    fwd: Arc<Forwarder>,
    client: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    inbuf: Buf,
    upbuf: Buf,
    /// The app's request head (kept until the response starts, for one retry).
    req_out: Vec<u8>,
    /// Identity headers from the pipeline.
    extra: Vec<u8>,
    /// What goes to the client next.
    resp_out: Vec<u8>,
}

/// How an exchange ended, for the connection loop.
enum Next {
    KeepAlive,
    Close,
}

/// An error while talking to the app, before the response started.
enum UpstreamError {
    Connect(io::Error),
    /// The connection failed before any response byte: a pooled one may have gone stale.
    Lost(io::Error),
    Malformed(&'static str),
    /// The client's body broke off or broke the chunked grammar.
    Client(&'static str),
}

impl Conn {
    fn new(
        fwd: Arc<Forwarder>,
        client: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            fwd,
            client,
            peer,
            shutdown,
            inbuf: Buf::new(8 * 1024),
            upbuf: Buf::new(BUF),
            req_out: Vec::with_capacity(2048),
            extra: Vec::with_capacity(1024),
            resp_out: Vec::with_capacity(2048),
        }
    }

    async fn serve(mut self) {
        loop {
            match self.read_request().await {
                Some(prepared) => {
                    if let Next::Close = self.exchange(prepared).await {
                        break;
                    }
                }
                None => break,
            }
            if *self.shutdown.borrow() {
                break;
            }
        }
        let _ = self.client.shutdown().await;
    }

    /// Reads and prepares the next request head; `None` when the connection should end
    /// (closed, idle, shutting down, or answered with an error already).
    async fn read_request(&mut self) -> Option<Prepared> {
        let limit = self.fwd.pipeline.max_header_bytes.max(1024);
        let mut deadline = None;
        loop {
            if !self.inbuf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(self.inbuf.filled()) {
                    Ok(httparse::Status::Complete(n)) => {
                        return Some(prepare(
                            &self.fwd,
                            &req,
                            n,
                            &mut self.req_out,
                            &mut self.extra,
                        ));
                    }
                    Ok(httparse::Status::Partial) if self.inbuf.filled().len() >= limit => {
                        self.fwd.pipeline.metrics.decided("head_too_large");
                        self.answer_close(
                            &Rejection::HeadTooLarge.answer(&self.fwd.pipeline.identity),
                        )
                        .await;
                        return None;
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        self.fwd.pipeline.metrics.decided("head_too_large");
                        self.answer_close(
                            &Rejection::HeadTooLarge.answer(&self.fwd.pipeline.identity),
                        )
                        .await;
                        return None;
                    }
                    Err(error) => {
                        tracing::info!(%error, client = %self.peer, "malformed request refused");
                        self.protocol_error(400, "malformed request").await;
                        return None;
                    }
                }
            }
            let read = if self.inbuf.is_empty() && deadline.is_none() {
                // Between requests: wait for the next one, or for shutdown.
                tokio::select! {
                    r = tokio::time::timeout(CLIENT_IDLE, self.inbuf.fill(&mut self.client, limit)) => r,
                    _ = self.shutdown.changed() => return None,
                }
            } else {
                let at =
                    *deadline.get_or_insert_with(|| tokio::time::Instant::now() + HEAD_TIMEOUT);
                tokio::time::timeout_at(at, self.inbuf.fill(&mut self.client, limit)).await
            };
            match read {
                Ok(Ok(0)) | Err(_) => return None,
                Ok(Ok(_)) => {
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + HEAD_TIMEOUT);
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "client read failed");
                    return None;
                }
            }
        }
    }

    /// One request and its response.
    async fn exchange(&mut self, mut p: Prepared) -> Next {
        let start = Instant::now();
        let _in_flight = self.fwd.in_flight.enter();
        self.inbuf.consume(p.head_len);
        let outcome = std::mem::replace(&mut p.outcome, Err(Refusal::Protocol(500, "")));
        let allowed = match outcome {
            Ok(allowed) => allowed,
            Err(Refusal::Decision(rejection, method, path)) => {
                let answer =
                    self.fwd
                        .pipeline
                        .refuse(&rejection, &method, &path, &self.peer.to_string());
                self.fwd.pipeline.finish(rejection.reason(), None, start);
                // Whatever body follows is not read: the connection ends with the answer.
                let keep = p.keep_alive && p.body == Framing::None;
                return self.answer(&answer, keep).await;
            }
            Err(Refusal::Protocol(status, what)) => {
                tracing::info!(status, error = what, client = %self.peer, "malformed request refused");
                self.protocol_error(status, what).await;
                return Next::Close;
            }
        };
        let next = self.forward(&p).await;
        self.fwd
            .pipeline
            .finish(allowed.reason, allowed.context.as_deref(), start);
        next
    }

    /// Sends the prepared request to the app and its answer to the client.
    async fn forward(&mut self, p: &Prepared) -> Next {
        if p.expect_continue
            && p.body != Framing::None
            && !p.http10
            && self
                .client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return Next::Close;
        }
        // A request without a body can be sent again if a pooled connection turns out stale.
        let mut app = match self.send_request(p).await {
            Ok(app) => app,
            Err(e) => return self.upstream_failed(e).await,
        };
        let next = match self.read_response(&mut app, p).await {
            Ok(next) => next,
            Err(UpstreamError::Lost(_)) if app.reused && p.body == Framing::None => {
                // The app closed an idle pooled connection just as it was reused: once more,
                // on a new connection.
                self.upbuf.clear();
                app = match self.connect().await {
                    Ok(s) => App::new(s, false),
                    Err(e) => return self.upstream_failed(UpstreamError::Connect(e)).await,
                };
                if let Err(e) = app.stream.write_all(&self.req_out).await {
                    return self.upstream_failed(UpstreamError::Lost(e)).await;
                }
                match self.read_response(&mut app, p).await {
                    Ok(next) => next,
                    Err(e) => return self.upstream_failed(e).await,
                }
            }
            Err(e) => return self.upstream_failed(e).await,
        };
        if app.reusable {
            self.fwd.pool.put(app.stream);
        }
        next
    }

    async fn connect(&self) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(
            self.fwd.connect_timeout,
            TcpStream::connect(self.fwd.upstream),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Writes the head (with what body is already buffered), then streams the rest of the body.
    async fn send_request(&mut self, p: &Prepared) -> Result<App, UpstreamError> {
        let mut app = match self.fwd.pool.take() {
            Some(stream) => App::new(stream, true),
            None => App::new(self.connect().await.map_err(UpstreamError::Connect)?, false),
        };
        match p.body {
            Framing::None => {
                if let Err(e) = app.stream.write_all(&self.req_out).await {
                    if !app.reused {
                        return Err(UpstreamError::Lost(e));
                    }
                    app = App::new(self.connect().await.map_err(UpstreamError::Connect)?, false);
                    app.stream
                        .write_all(&self.req_out)
                        .await
                        .map_err(UpstreamError::Lost)?;
                }
            }
            Framing::Length(n) => {
                self.resp_out.clear();
                self.resp_out.extend_from_slice(&self.req_out);
                copy_length(
                    &mut self.inbuf,
                    &mut self.resp_out,
                    &mut self.client,
                    &mut app.stream,
                    n,
                )
                .await
                .map_err(|e| match e {
                    Copy::Source(_) => UpstreamError::Client("the request body ended early"),
                    Copy::Sink(e) => UpstreamError::Lost(e),
                })?;
            }
            Framing::Chunked => {
                let mut decoder = Chunked::new();
                self.resp_out.clear();
                self.resp_out.extend_from_slice(&self.req_out);
                loop {
                    let out = &mut self.resp_out;
                    let used = decoder
                        .decode(self.inbuf.filled(), |d| encode_chunk(out, d))
                        .map_err(|e| {
                            tracing::info!(error = %e, "request body refused");
                            UpstreamError::Client("malformed chunked request body")
                        })?;
                    self.inbuf.consume(used);
                    if decoder.is_done() {
                        self.resp_out.extend_from_slice(LAST_CHUNK);
                    }
                    app.stream
                        .write_all(&self.resp_out)
                        .await
                        .map_err(UpstreamError::Lost)?;
                    self.resp_out.clear();
                    if decoder.is_done() {
                        break;
                    }
                    match self.inbuf.fill(&mut self.client, BUF).await {
                        Ok(0) | Err(_) => {
                            return Err(UpstreamError::Client("the request body ended early"));
                        }
                        Ok(_) => {}
                    }
                }
            }
            Framing::UntilClose => {}
        }
        Ok(app)
    }

    /// Reads the app's response head, writes it and the body to the client.
    async fn read_response(&mut self, app: &mut App, p: &Prepared) -> Result<Next, UpstreamError> {
        // Whatever an earlier app connection left unread belongs to no response of this one.
        self.upbuf.clear();
        let mut received_any = false;
        let (framing, head_len, app_keep, client_keep) = loop {
            if !self.upbuf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(self.upbuf.filled()) {
                    Ok(httparse::Status::Complete(n)) => {
                        let code = resp.code.unwrap_or(0);
                        if code == 101 && p.upgrade {
                            self.resp_out.clear();
                            write_response_head(
                                &mut self.resp_out,
                                &resp,
                                ResponseFraming::Upgrade,
                            );
                            self.upbuf.consume(n);
                            return Ok(self.tunnel(app).await);
                        }
                        if (100..200).contains(&code) {
                            // 100 is portcullis's own business; other interim answers are
                            // passed to HTTP/1.1 clients.
                            if code != 100 && code != 101 && !p.http10 {
                                self.resp_out.clear();
                                write_response_head(
                                    &mut self.resp_out,
                                    &resp,
                                    ResponseFraming::Interim,
                                );
                                let _ = self.client.write_all(&self.resp_out).await;
                            }
                            if code == 101 {
                                return Err(UpstreamError::Malformed(
                                    "101 without an upgrade request",
                                ));
                            }
                            self.upbuf.consume(n);
                            continue;
                        }
                        let info = response_info(&resp, p.is_head)?;
                        let to_client = match info.framing {
                            Framing::None => ResponseFraming::AsIs,
                            Framing::Length(n) => ResponseFraming::Length(n),
                            Framing::Chunked | Framing::UntilClose if !p.http10 => {
                                ResponseFraming::Chunked
                            }
                            Framing::Chunked | Framing::UntilClose => ResponseFraming::Close,
                        };
                        let keep = p.keep_alive
                            && !*self.shutdown.borrow()
                            && to_client != ResponseFraming::Close;
                        self.resp_out.clear();
                        write_response_head(&mut self.resp_out, &resp, to_client);
                        if !keep {
                            push_header(&mut self.resp_out, b"connection", b"close");
                        } else if p.http10 {
                            push_header(&mut self.resp_out, b"connection", b"keep-alive");
                        }
                        self.resp_out.extend_from_slice(b"\r\n");
                        break (info.framing, n, info.keep_alive, keep);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(UpstreamError::Malformed("malformed response head")),
                }
            }
            match self.upbuf.fill(&mut app.stream, MAX_RESPONSE_HEAD).await {
                Ok(0) if !received_any => {
                    return Err(UpstreamError::Lost(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(0) => return Err(UpstreamError::Malformed("the app closed mid-response")),
                Ok(_) => received_any = true,
                Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                    return Err(UpstreamError::Malformed("response head too large"));
                }
                Err(e) if !received_any => return Err(UpstreamError::Lost(e)),
                Err(_) => return Err(UpstreamError::Malformed("the app closed mid-response")),
            }
        };
        self.upbuf.consume(head_len);
        let rechunk = !p.http10 && matches!(framing, Framing::Chunked | Framing::UntilClose);

        // From here on the client has a response under way: a failure can only end it.
        let complete = match self.relay_body(app, framing, rechunk).await {
            Ok(complete) => complete,
            Err(error) => {
                tracing::warn!(%error, "response to the client cut short");
                return Ok(Next::Close);
            }
        };
        app.reusable =
            complete && app_keep && framing != Framing::UntilClose && self.upbuf.is_empty();
        Ok(if client_keep && complete {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// Copies the response body; `Ok(true)` once the whole message reached the client.
    async fn relay_body(
        &mut self,
        app: &mut App,
        framing: Framing,
        rechunk: bool,
    ) -> io::Result<bool> {
        match framing {
            Framing::None => {
                self.client.write_all(&self.resp_out).await?;
            }
            Framing::Length(n) => {
                copy_length(
                    &mut self.upbuf,
                    &mut self.resp_out,
                    &mut app.stream,
                    &mut self.client,
                    n,
                )
                .await
                .map_err(|e| match e {
                    Copy::Source(e) | Copy::Sink(e) => e,
                })?;
            }
            Framing::Chunked => {
                let mut decoder = Chunked::new();
                loop {
                    let out = &mut self.resp_out;
                    let used = decoder
                        .decode(self.upbuf.filled(), |d| {
                            if rechunk {
                                encode_chunk(out, d)
                            } else {
                                out.extend_from_slice(d)
                            }
                        })
                        .map_err(io::Error::other)?;
                    self.upbuf.consume(used);
                    if decoder.is_done() && rechunk {
                        self.resp_out.extend_from_slice(LAST_CHUNK);
                    }
                    self.client.write_all(&self.resp_out).await?;
                    self.resp_out.clear();
                    if decoder.is_done() {
                        break;
                    }
                    if self.upbuf.fill(&mut app.stream, BUF).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
            Framing::UntilClose => loop {
                let data = self.upbuf.filled();
                if rechunk {
                    encode_chunk(&mut self.resp_out, data);
                } else {
                    self.resp_out.extend_from_slice(data);
                }
                self.upbuf.clear();
                self.client.write_all(&self.resp_out).await?;
                self.resp_out.clear();
                if self.upbuf.fill(&mut app.stream, BUF).await? == 0 {
                    if rechunk {
                        self.client.write_all(LAST_CHUNK).await?;
                    }
                    break;
                }
            },
        }
        Ok(true)
    }

    /// After a 101: the head, whatever both sides already sent, then bytes both ways.
    async fn tunnel(&mut self, app: &mut App) -> Next {
        self.resp_out.extend_from_slice(self.upbuf.filled());
        self.upbuf.clear();
        if self.client.write_all(&self.resp_out).await.is_err() {
            return Next::Close;
        }
        if !self.inbuf.is_empty() {
            if app.stream.write_all(self.inbuf.filled()).await.is_err() {
                return Next::Close;
            }
            self.inbuf.clear();
        }
        if let Err(error) = tokio::io::copy_bidirectional(&mut self.client, &mut app.stream).await {
            tracing::debug!(%error, "upgraded connection ended");
        }
        Next::Close
    }

    async fn upstream_failed(&mut self, error: UpstreamError) -> Next {
        let (status, what) = match &error {
            UpstreamError::Connect(e) | UpstreamError::Lost(e) => {
                tracing::warn!(upstream = %self.fwd.upstream, error = %e, "upstream unavailable");
                (502, "the app behind the sidecar is unreachable")
            }
            UpstreamError::Malformed(what) => {
                tracing::warn!(upstream = %self.fwd.upstream, error = what, "request not completed");
                (502, *what)
            }
            UpstreamError::Client(what) => {
                tracing::info!(client = %self.peer, error = what, "request body refused");
                (400, *what)
            }
        };
        let error = if status == 400 {
            "bad_request"
        } else {
            "bad_gateway"
        };
        let answer = Answer {
            status,
            www_authenticate: None,
            body: json_body(error, what),
        };
        self.answer(&answer, false).await
    }

    async fn protocol_error(&mut self, status: u16, what: &'static str) {
        let error = if status == 501 {
            "not_implemented"
        } else {
            "bad_request"
        };
        let answer = Answer {
            status,
            www_authenticate: None,
            body: json_body(error, what),
        };
        self.answer_close(&answer).await;
    }

    async fn answer_close(&mut self, answer: &Answer) {
        self.answer(answer, false).await;
    }

    /// Writes a complete answer of portcullis's own.
    async fn answer(&mut self, answer: &Answer, keep_alive: bool) -> Next {
        let keep_alive = keep_alive && !*self.shutdown.borrow();
        let out = &mut self.resp_out;
        out.clear();
        let reason = http::StatusCode::from_u16(answer.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", answer.status).as_bytes());
        if let Some(challenge) = &answer.www_authenticate {
            push_header(out, b"www-authenticate", challenge.as_bytes());
        }
        push_header(out, b"content-type", b"application/json");
        push_header(
            out,
            b"content-length",
            answer.body.len().to_string().as_bytes(),
        );
        push_header(out, b"cache-control", b"no-store");
        if !keep_alive {
            push_header(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&answer.body);
        if self.client.write_all(&self.resp_out).await.is_err() || !keep_alive {
            return Next::Close;
        }
        Next::KeepAlive
    }
}

/// A connection to the app for one exchange.
struct App {
    stream: TcpStream,
    /// Taken from the pool (it may have been closed by the app meanwhile).
    reused: bool,
    /// Set once a whole response was read and the app keeps the connection open.
    reusable: bool,
}

impl App {
    fn new(stream: TcpStream, reused: bool) -> Self {
        Self {
            stream,
            reused,
            reusable: false,
        }
    }
}

/// Which side of a copy failed.
enum Copy {
    Source(io::Error),
    Sink(io::Error),
}

/// Sends `head` followed by exactly `n` body bytes: first those already in `buf`, then what
/// `from` delivers. The head and the buffered part go out in one write.
async fn copy_length<R, W>(
    buf: &mut Buf,
    head: &mut Vec<u8>,
    from: &mut R,
    to: &mut W,
    n: u64,
) -> Result<(), Copy>
where
    R: AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut left = n;
    let mut take = buf
        .filled()
        .len()
        .min(usize::try_from(left).unwrap_or(usize::MAX));
    head.extend_from_slice(&buf.filled()[..take]);
    let mut chunk: &[u8] = head;
    loop {
        to.write_all(chunk).await.map_err(Copy::Sink)?;
        buf.consume(take);
        left -= take as u64;
        if left == 0 {
            return Ok(());
        }
        match buf.fill(from, BUF).await {
            Ok(0) => return Err(Copy::Source(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(Copy::Source(e)),
        }
        take = buf
            .filled()
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        chunk = &buf.filled()[..take];
    }
}

/// Parses the request head into what the exchange needs, asking the pipeline on the way.
fn prepare(
    fwd: &Forwarder,
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    req_out: &mut Vec<u8>,
    extra: &mut Vec<u8>,
) -> Prepared {
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let http10 = req.version == Some(0);
    let mut p = Prepared {
        head_len,
        is_head: method == "HEAD",
        keep_alive: !http10,
        http10,
        body: Framing::None,
        upgrade: false,
        expect_continue: false,
        outcome: Err(Refusal::Protocol(400, "malformed request")),
    };

    // One pass over the headers for framing, connection options and credentials.
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut bad_length = false;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut upgrade_value: Option<&[u8]> = None;
    let mut connection_upgrade = false;
    let mut connection_names = false;
    let mut auth_values: [&[u8]; 2] = [&[], &[]];
    let mut auth_count = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            14 if name.eq_ignore_ascii_case(b"content-length") => match parse_length(h.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => bad_length = true,
            },
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                te = Some(h.value);
                te_count += 1;
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        p.keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        p.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        connection_upgrade = true;
                    } else {
                        connection_names = true;
                    }
                }
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade_value = Some(h.value),
            6 if name.eq_ignore_ascii_case(b"expect") => {
                p.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
            }
            13 if name.eq_ignore_ascii_case(b"authorization") => {
                if auth_count < 2 {
                    auth_values[auth_count] = h.value;
                }
                auth_count += 1;
            }
            _ => {}
        }
    }
    // An HTTP/1.0 client keeps the connection only when it asked to.
    if http10
        && !req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("connection")
                && tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"keep-alive"))
        })
    {
        p.keep_alive = false;
    }

    // Framing first: a message portcullis would delimit differently from the app never passes.
    let refuse = |p: &mut Prepared, status, what| {
        p.keep_alive = false;
        p.outcome = Err(Refusal::Protocol(status, what));
    };
    if te_count > 0 {
        if length.is_some() || bad_length {
            refuse(&mut p, 400, "both Content-Length and Transfer-Encoding");
            return p;
        }
        if http10 {
            refuse(&mut p, 400, "Transfer-Encoding in an HTTP/1.0 request");
            return p;
        }
        if te_count > 1 || !te.is_some_and(|v| trim(v).eq_ignore_ascii_case(b"chunked")) {
            refuse(&mut p, 501, "only the chunked transfer coding is supported");
            return p;
        }
        p.body = Framing::Chunked;
    } else if bad_length {
        refuse(&mut p, 400, "invalid Content-Length");
        return p;
    } else if let Some(n) = length.filter(|&n| n > 0) {
        p.body = Framing::Length(n);
    }
    if hosts > 1 || (hosts == 0 && !http10) {
        refuse(&mut p, 400, "exactly one Host header is required");
        return p;
    }
    p.upgrade = connection_upgrade && upgrade_value.is_some();

    // The request-target: origin form, or absolute form reduced to it.
    let origin = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        refuse(&mut p, 400, "the request-target must be a path");
        return p;
    };
    let (raw_path, query) = match origin.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (origin, None),
    };
    let path = match normalize_path(raw_path) {
        Ok(path) => path,
        Err(error) => {
            tracing::info!(%error, "request path refused");
            p.outcome = Err(Refusal::Decision(
                Rejection::BadPath,
                method.to_string(),
                raw_path.to_string(),
            ));
            return p;
        }
    };

    extra.clear();
    let inbound = Inbound {
        method,
        path: &path,
        query,
        authorization: match auth_count {
            0 => Authorization::None,
            1 => Authorization::One(auth_values[0]),
            _ => Authorization::Many,
        },
        head_bytes: head_len,
        peer: None,
    };
    let allowed = match fwd.pipeline.decide(&inbound, &mut HeadSink(extra)) {
        Ok(allowed) => allowed,
        Err(rejection) => {
            p.outcome = Err(Refusal::Decision(
                rejection,
                method.to_string(),
                path.into_owned(),
            ));
            return p;
        }
    };
    let drop_authorization = !fwd.pipeline.forward_token && allowed.reason != "public";

    // The app's request head.
    req_out.clear();
    req_out.extend_from_slice(method.as_bytes());
    req_out.push(b' ');
    req_out.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        req_out.push(b'?');
        req_out.extend_from_slice(q.as_bytes());
    }
    req_out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("content-length")
            || (p.expect_continue && name.eq_ignore_ascii_case("expect"))
            || (drop_authorization && name.eq_ignore_ascii_case("authorization"))
            || fwd.pipeline.is_identity_header(name)
            || (connection_names && listed_in_connection(req.headers, name))
        {
            continue;
        }
        push_header(req_out, name.as_bytes(), h.value);
    }
    if hosts == 0 {
        push_header(req_out, b"host", fwd.upstream_host.as_bytes());
    }
    match p.body {
        Framing::Chunked => push_header(req_out, b"transfer-encoding", b"chunked"),
        Framing::Length(n) => push_header(req_out, b"content-length", n.to_string().as_bytes()),
        _ if length == Some(0) => push_header(req_out, b"content-length", b"0"),
        _ => {}
    }
    if let (true, Some(protocol)) = (p.upgrade, upgrade_value) {
        push_header(req_out, b"connection", b"upgrade");
        push_header(req_out, b"upgrade", protocol);
    }
    req_out.extend_from_slice(extra);
    if let Some(handle) = &allowed.context {
        push_header(req_out, CONTEXT_HEADER.as_bytes(), handle.as_bytes());
    }
    req_out.extend_from_slice(b"\r\n");
    p.outcome = Ok(allowed);
    p
}

/// What the response head says about the body and the app connection.
struct ResponseInfo {
    framing: Framing,
    /// Whether the app connection may be reused afterwards.
    keep_alive: bool,
}

fn response_info(
    resp: &httparse::Response<'_, '_>,
    is_head: bool,
) -> Result<ResponseInfo, UpstreamError> {
    let code = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_length(h.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => {
                    return Err(UpstreamError::Malformed(
                        "invalid Content-Length from the app",
                    ));
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The final coding decides: chunked, or else the body runs to the close.
            let last = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(trim)
                .unwrap_or(b"");
            chunked = last.eq_ignore_ascii_case(b"chunked");
            other_coding |= !chunked;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if is_head || code == 204 || code == 304 {
        Framing::None
    } else if chunked && !other_coding {
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(ResponseInfo {
        framing,
        keep_alive,
    })
}

/// How the client's copy of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseFraming {
    /// No body: the app's `Content-Length` (a HEAD answer) is passed on as it is.
    AsIs,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client: the body ends with the connection.
    Close,
    /// A 1xx answer other than 101.
    Interim,
    /// 101: `Connection` and `Upgrade` are passed on.
    Upgrade,
}

/// Writes the status line and the headers to pass on (no final CRLF, except for interim and
/// upgrade answers, which are complete).
fn write_response_head(
    out: &mut Vec<u8>,
    resp: &httparse::Response<'_, '_>,
    framing: ResponseFraming,
) {
    let code = resp.code.unwrap_or(502);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let upgrade = framing == ResponseFraming::Upgrade;
    let connection_names = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("connection")
            && tokens(h.value).any(|t| {
                !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"upgrade")
            })
    });
    for h in resp.headers.iter() {
        let name = h.name;
        let pass = if upgrade
            && (name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("upgrade"))
        {
            true
        } else if is_hop_by_hop(name) {
            false
        } else if name.eq_ignore_ascii_case("content-length") {
            framing == ResponseFraming::AsIs || framing == ResponseFraming::Interim
        } else {
            !(connection_names && listed_in_connection(resp.headers, name))
        };
        if pass {
            push_header(out, name.as_bytes(), h.value);
        }
    }
    match framing {
        ResponseFraming::Length(n) => push_header(out, b"content-length", n.to_string().as_bytes()),
        ResponseFraming::Chunked => push_header(out, b"transfer-encoding", b"chunked"),
        ResponseFraming::Interim | ResponseFraming::Upgrade => out.extend_from_slice(b"\r\n"),
        ResponseFraming::AsIs | ResponseFraming::Close => {}
    }
}

/// Headers that describe one hop and are never passed on (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether `name` is listed in a `Connection` header of the same message.
fn listed_in_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("connection")
            && tokens(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// A `Content-Length` value: digits only, at most 18 of them.
fn parse_length(value: &[u8]) -> Option<u64> {
    let v = trim(value);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_length(b"12"), Some(12));
        assert_eq!(parse_length(b" 0 "), Some(0));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1,1",
            b"0x10",
            b"1 2",
            b"9999999999999999999",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hop_by_hop_names_in_any_case() {
        assert!(is_hop_by_hop("Connection"));
        assert!(is_hop_by_hop("TRANSFER-ENCODING"));
        assert!(!is_hop_by_hop("content-type"));
        let headers = [httparse::Header {
            name: "Connection",
            value: b"keep-alive, X-Secret",
        }];
        assert!(listed_in_connection(&headers, "x-secret"));
        assert!(!listed_in_connection(&headers, "x-other"));
    }
}

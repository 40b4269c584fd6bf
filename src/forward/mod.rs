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
mod head;
mod pool;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::answer::{Answer, Rejection, json_body};
use crate::config::Settings;
use crate::pipeline::Pipeline;
use crate::proxy::InFlight;
use chunked::{Chunked, LAST_CHUNK, encode_chunk};
use head::{
    Framing, Prepared, Refusal, ResponseFraming, prepare, push_header, response_info,
    write_response_head,
};
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
            // Registered here, so that a failure stops the start rather than one thread.
            let listener = {
                let _context = runtime.enter();
                tokio::net::TcpListener::from_std(listener)?
            };
            std::thread::Builder::new()
                .name(format!("inbound-{i}"))
                .spawn(move || runtime.block_on(this.accept_loop(listener, shutdown)))?;
        }
        Ok(())
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Small writes are whole messages: never wait to coalesce them.
                        let _ = stream.set_nodelay(true);
                        let conn = Conn::new(self.clone(), stream, peer, shutdown.clone());
                        tokio::spawn(conn.serve());
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
                            &self.fwd.pipeline,
                            &self.fwd.upstream_host,
                            &req,
                            n,
                            &mut self.req_out,
                            &mut self.extra,
                        ));
                    }
                    Ok(httparse::Status::Partial) if self.inbuf.filled().len() < limit => {}
                    Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                        self.fwd.pipeline.metrics.decided("head_too_large");
                        let answer = Rejection::HeadTooLarge.answer(&self.fwd.pipeline.identity);
                        self.answer(&answer, false).await;
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
                    r = tokio::time::timeout(
                        CLIENT_IDLE,
                        self.inbuf.fill(&mut self.client, limit),
                    ) => r,
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
                tracing::info!(
                    status,
                    error = what,
                    client = %self.peer,
                    "malformed request refused"
                );
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
                    CopyError::Source(_) => UpstreamError::Client("the request body ended early"),
                    CopyError::Sink(e) => UpstreamError::Lost(e),
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
                            if code == 101 {
                                return Err(UpstreamError::Malformed(
                                    "101 without an upgrade request",
                                ));
                            }
                            if code != 100 && !p.http10 {
                                self.resp_out.clear();
                                write_response_head(
                                    &mut self.resp_out,
                                    &resp,
                                    ResponseFraming::Interim,
                                );
                                let _ = self.client.write_all(&self.resp_out).await;
                            }
                            self.upbuf.consume(n);
                            continue;
                        }
                        let info =
                            response_info(&resp, p.is_head).map_err(UpstreamError::Malformed)?;
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
                    CopyError::Source(e) | CopyError::Sink(e) => e,
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
                let upstream = self.fwd.upstream;
                tracing::warn!(%upstream, error = what, "request not completed");
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
        self.answer(&answer, false).await;
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
enum CopyError {
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
) -> Result<(), CopyError>
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
        to.write_all(chunk).await.map_err(CopyError::Sink)?;
        buf.consume(take);
        left -= take as u64;
        if left == 0 {
            return Ok(());
        }
        match buf.fill(from, BUF).await {
            Ok(0) => return Err(CopyError::Source(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(CopyError::Source(e)),
        }
        take = buf
            .filled()
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        chunk = &buf.filled()[..take];
    }
}

//! A strict, streaming decoder for the chunked transfer coding (RFC 9112 §7.1).
//!
//! The forwarder never passes a caller's chunk framing on: it decodes it here and writes its
//! own (sizes only, no extensions, no trailers), so the app's parser cannot be made to see a
//! different message boundary than portcullis did. Anything outside the grammar is an error.

use std::fmt;

/// The longest chunk-size line portcullis reads past the digits (extensions are discarded).
const MAX_EXTENSION: usize = 1024;
/// The largest trailer section it reads (and discards).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(&'static str);

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad chunked body: {}", self.0)
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits; `digits` so far.
    Size {
        digits: u8,
    },
    /// After the digits: optional whitespace, then `;` or CR.
    AfterSize,
    /// Inside chunk extensions, up to CR.
    Extension {
        len: usize,
    },
    /// CR seen after the size line, expecting LF.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines; `line` bytes into the current one.
    Trailer {
        line: usize,
    },
    TrailerLf {
        line: usize,
    },
    Done,
}

/// Decoding state for one chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    remaining: u64,
    trailer_bytes: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    pub fn new() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            remaining: 0,
            trailer_bytes: 0,
        }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as belongs to this body, handing each run of data to `data`.
    /// Returns how many bytes were consumed: fewer than `input.len()` only once done (the rest
    /// is the next message).
    pub fn decode(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    data(&input[i..i + take]);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size { digits } => match hex(b) {
                    Some(v) => {
                        if digits >= 15 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.size = self.size << 4 | u64::from(v);
                        self.state = State::Size { digits: digits + 1 };
                    }
                    None if digits == 0 => return Err(ChunkError("chunk size expected")),
                    None => {
                        self.state = State::AfterSize;
                        continue; // look at this byte again
                    }
                },
                State::AfterSize => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::Extension { len: 0 },
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(ChunkError("unexpected byte after the chunk size")),
                },
                State::Extension { len } => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff if len < MAX_EXTENSION => {
                        self.state = State::Extension { len: len + 1 };
                    }
                    _ if len >= MAX_EXTENSION => {
                        return Err(ChunkError("chunk extension too long"));
                    }
                    _ => return Err(ChunkError("control byte in a chunk extension")),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CRLF expected after the chunk size"));
                    }
                    if self.size == 0 {
                        self.state = State::Trailer { line: 0 };
                    } else {
                        self.remaining = self.size;
                        self.state = State::Data;
                    }
                    self.size = 0;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("CRLF expected after chunk data"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CRLF expected after chunk data"));
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::Trailer { line } => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkError("trailer section too large"));
                    }
                    match b {
                        b'\r' => self.state = State::TrailerLf { line },
                        b'\n' => return Err(ChunkError("bare LF in the trailer section")),
                        _ => self.state = State::Trailer { line: line + 1 },
                    }
                }
                State::TrailerLf { line } => {
                    if b != b'\n' {
                        return Err(ChunkError("CRLF expected in the trailer section"));
                    }
                    self.state = if line == 0 {
                        State::Done
                    } else {
                        State::Trailer { line: 0 }
                    };
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends one chunk of `data` in the chunked coding to `out` (nothing for empty data).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut c = Chunked::new();
        let mut out = Vec::new();
        let n = c.decode(input, |d| out.extend_from_slice(d))?;
        Ok((out, n, c.is_done()))
    }

    #[test]
    fn decodes_and_stops_at_the_end() {
        let input = b"5\r\nhello\r\n6;name=v\r\n world\r\n0\r\nx-t: 1\r\n\r\nGET / HTTP/1.1";
        let (out, n, done) = decode_all(input).expect("valid");
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(&input[n..], b"GET / HTTP/1.1");
    }

    #[test]
    fn decodes_byte_by_byte() {
        let input = b"A\r\n0123456789\r\n0\r\n\r\n";
        let mut c = Chunked::new();
        let mut out = Vec::new();
        for b in input.iter() {
            assert_eq!(
                c.decode(std::slice::from_ref(b), |d| out.extend_from_slice(d)),
                Ok(1)
            );
        }
        assert!(c.is_done());
        assert_eq!(out, b"0123456789");
    }

    #[test]
    fn refuses_what_the_grammar_does_not_allow() {
        for bad in [
            &b"\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXY",
            b"-5\r\n",
            b"5 x\r\n",
            b"ffffffffffffffff0\r\n",
            b"0\r\nx\n\r\n",
            b"3\r\nabc\r\n0\r\n\r\r",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn encodes_sizes_in_hex() {
        let mut out = Vec::new();
        encode_chunk(&mut out, &[b'x'; 26]);
        assert!(out.starts_with(b"1a\r\n"));
        assert!(out.ends_with(b"\r\n"));
        encode_chunk(&mut out, b"");
        assert_eq!(out.len(), 4 + 26 + 2);
    }
}

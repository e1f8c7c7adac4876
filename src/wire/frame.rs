//! PostgreSQL protocol framing: we split frames ourselves (tag + bounded length) and hand the
//! message decoders only an isolated frame; the unmasked relay only follows message boundaries.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest regular message we accept (PostgreSQL's own limit for most messages is 1 GiB).
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Largest startup packet (PostgreSQL: 10,000 bytes).
pub const MAX_STARTUP: usize = 10_000;

#[derive(Debug)]
pub enum FrameError {
    Io(std::io::Error),
    Protocol(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

/// A buffered reader of tagged frames. A frame is returned whole: tag byte, length, body.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    /// When the last read from the socket completed: every buffered byte arrived by then.
    filled_at: std::time::Instant,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
            filled_at: std::time::Instant::now(),
        }
    }

    pub fn with_buffer(inner: R, buf: BytesMut) -> Self {
        FrameReader {
            inner,
            buf,
            filled_at: std::time::Instant::now(),
        }
    }

    /// A time at or after the arrival of every frame returned so far.
    pub fn filled_at(&self) -> std::time::Instant {
        self.filled_at
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Whether a complete frame is already buffered.
    pub fn has_frame(&self) -> bool {
        if self.buf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        len >= 4 && self.buf.len() > len as usize
    }

    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    /// A complete frame already in the buffer, without reading.
    pub fn try_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let total = self.frame_total()?;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(total).freeze()))
    }

    /// The next frame, or None at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(Some(f));
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            self.filled_at = std::time::Instant::now();
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(FrameError::Protocol(
                    "connection closed in the middle of a message".into(),
                ));
            }
        }
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads until a complete frame is buffered (true) or the stream ends (false), without
    /// taking it. Cancel-safe.
    pub async fn wait_frame(&mut self) -> Result<bool, FrameError> {
        loop {
            if self.has_frame() {
                return Ok(true);
            }
            if self.buf.len() >= 5 {
                // Checks the length (an error for a bad one) and reserves room for the frame.
                self.try_frame_len()?;
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            self.filled_at = std::time::Instant::now();
            if n == 0 {
                return Ok(false);
            }
        }
    }

    fn try_frame_len(&mut self) -> Result<(), FrameError> {
        let total = self.frame_total()?;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
        }
        Ok(())
    }

    /// The size of the frame at the front of the buffer (its 5-byte header must be there),
    /// checked against the strict bounds.
    fn frame_total(&self) -> Result<usize, FrameError> {
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len < 4 || len as usize > MAX_MESSAGE {
            return Err(FrameError::Protocol(format!(
                "invalid message length {len} for message type {:?}",
                self.buf[0] as char
            )));
        }
        Ok(1 + len as usize)
    }
}

/// Follows the message boundaries of a byte stream that is relayed without being parsed (the
/// unmasked relay): per message it keeps the type byte and the first body byte (a
/// ReadyForQuery's transaction status) and skips the rest, so its cost is per message, not per
/// byte. A length that cannot be right makes it give up (`lost`).
#[derive(Debug, Default)]
pub struct MessageTracker {
    /// Type, length, first body byte of the current message.
    head: [u8; 6],
    /// How many of `head` are read (0: at a message boundary).
    have: usize,
    /// Body bytes of the current message after `head`, still to come.
    left: usize,
    lost: bool,
}

impl MessageTracker {
    /// Whether the bytes fed so far end at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && !self.lost
    }

    /// Whether the stream stopped making sense (then nothing is known about it).
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Feeds bytes; `done(type, first body byte)` is called for every message that completes.
    pub fn feed(&mut self, data: &[u8], done: impl FnMut(u8, Option<u8>)) {
        self.feed_inner(data, false, done);
    }

    /// Feeds bytes up to the first message boundary; returns how many it took (all of `data`
    /// when no message ends in it).
    pub fn feed_to_boundary(&mut self, data: &[u8], done: impl FnMut(u8, Option<u8>)) -> usize {
        self.feed_inner(data, true, done)
    }

    fn feed_inner(
        &mut self,
        data: &[u8],
        stop_at_boundary: bool,
        mut done: impl FnMut(u8, Option<u8>),
    ) -> usize {
        let mut i = 0;
        while i < data.len() && !self.lost {
            if self.left > 0 {
                let k = self.left.min(data.len() - i);
                self.left -= k;
                i += k;
            } else {
                self.head[self.have] = data[i];
                self.have += 1;
                i += 1;
                if self.have == 5 {
                    let len = i32::from_be_bytes([
                        self.head[1],
                        self.head[2],
                        self.head[3],
                        self.head[4],
                    ]);
                    if len < 4 {
                        self.lost = true;
                        break;
                    }
                    if len > 4 {
                        // The first body byte is read into `head` next.
                        continue;
                    }
                } else if self.have == 6 {
                    let len = i32::from_be_bytes([
                        self.head[1],
                        self.head[2],
                        self.head[3],
                        self.head[4],
                    ]);
                    self.left = len as usize - 5;
                } else {
                    continue;
                }
            }
            if self.left == 0 && self.have >= 5 {
                let first = (self.have == 6).then_some(self.head[5]);
                done(self.head[0], first);
                self.have = 0;
                if stop_at_boundary {
                    break;
                }
            }
        }
        i
    }
}

/// Reads an untagged startup-phase packet (length includes itself).
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Bytes>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = i32::from_be_bytes(len);
    if n < 8 || n as usize > MAX_STARTUP {
        return Err(FrameError::Protocol(format!(
            "invalid startup packet length {n}"
        )));
    }
    let mut buf = BytesMut::with_capacity(n as usize);
    buf.put_slice(&len);
    buf.resize(n as usize, 0);
    r.read_exact(&mut buf[4..]).await?;
    Ok(Some(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frontend::Query;
    use tokio::io::AsyncWriteExt;

    fn encode_ready(out: &mut BytesMut, status: u8) {
        crate::wire::backend::ReadyForQuery { status }.encode(out);
    }

    #[tokio::test]
    async fn frames_split_under_partial_reads_and_pipelining() {
        let mut all = BytesMut::new();
        Query::put(&mut all, "SELECT 1");
        Query::put(&mut all, "SELECT 2");
        let (mut a, b) = tokio::io::duplex(3);
        let data = all.clone();
        tokio::spawn(async move {
            for chunk in data.chunks(2) {
                a.write_all(chunk).await.unwrap();
            }
        });
        let mut r = FrameReader::new(b);
        let f1 = r.next().await.unwrap().unwrap();
        let f2 = r.next().await.unwrap().unwrap();
        assert_eq!(Query::decode(&f1).unwrap().sql, "SELECT 1");
        assert_eq!(Query::decode(&f2).unwrap().sql, "SELECT 2");
        assert!(r.next().await.unwrap().is_none());
    }

    #[test]
    fn bad_lengths() {
        let (_a, b) = tokio::io::duplex(8);
        let mut r = FrameReader::new(b);
        r.buf.put_u8(b'Q');
        r.buf.put_i32(2);
        assert!(r.try_frame().is_err());
        r.buf.clear();
        r.buf.put_u8(b'Q');
        r.buf.put_i32(i32::MAX);
        assert!(r.try_frame().is_err());
    }

    /// Every split of a stream into chunks reports the same messages, and boundaries are seen
    /// exactly where messages end.
    #[test]
    fn tracker_follows_messages_across_any_split() {
        let mut all = BytesMut::new();
        Query::put(&mut all, "SELECT 1");
        all.put_u8(b'1'); // ParseComplete: empty body
        all.put_i32(4);
        encode_ready(&mut all, b'T');
        all.put_u8(b'D');
        all.put_i32(4 + 300);
        all.extend_from_slice(&[7u8; 300]);
        encode_ready(&mut all, b'I');
        let want = vec![
            (b'Q', Some(b'S')),
            (b'1', None),
            (b'Z', Some(b'T')),
            (b'D', Some(7)),
            (b'Z', Some(b'I')),
        ];
        for chunk in [1, 2, 3, 5, 6, 7, 64, all.len()] {
            let mut t = MessageTracker::default();
            let mut got = Vec::new();
            for c in all.chunks(chunk) {
                t.feed(c, |tag, first| got.push((tag, first)));
            }
            assert_eq!(got, want, "chunks of {chunk}");
            assert!(t.at_boundary() && !t.lost());
        }
        // Stopping at the first boundary inside a chunk.
        let mut t = MessageTracker::default();
        t.feed(&all[..3], |_, _| {});
        assert!(!t.at_boundary());
        let q_len = 1 + 4 + "SELECT 1".len() + 1;
        let k = t.feed_to_boundary(&all[3..], |_, _| {});
        assert_eq!(k, q_len - 3);
        assert!(t.at_boundary());
        // A length below 4 cannot be followed.
        let mut t = MessageTracker::default();
        t.feed(&[b'Z', 0, 0, 0, 2, b'I'], |_, _| panic!("no message"));
        assert!(t.lost() && !t.at_boundary());
    }
}

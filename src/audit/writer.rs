//! The writer: one task that fingerprints, chains, rotates and fsyncs.

use super::*;

/// What the writer derives from a statement's text (cached per snapshot, search path and text).
pub(super) struct Derived {
    pub(super) fingerprint: Option<String>,
    pub(super) tables: Vec<String>,
}

pub(super) const DERIVED_CACHE: usize = 10_000;

/// A statement's text as the writer caches what it derives: snapshot epoch, search path, text.
pub(super) type DerivedKey = (u64, Arc<[String]>, Arc<str>);

pub(super) struct Writer {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Bytes of the current file already handed to the OS.
    pub(super) committed: u64,
    /// Records of the current batch, not yet written.
    pub(super) buf: Vec<u8>,
    /// Seq of the current file's first record (names it when rotated), and its time.
    pub(super) first: Option<(u64, u64)>,
    pub(super) seq: u64,
    pub(super) prev: String,
    pub(super) rotated_from: Option<String>,
    pub(super) max_bytes: u64,
    pub(super) max_age: Option<u64>,
    pub(super) unsynced: bool,
    pub(super) cache: HashMap<DerivedKey, Arc<Derived>>,
}

/// The name a rotated file gets: the current path plus the seq of its first record, padded so
/// that names sort in order.
pub fn rotated_name(path: &Path, first_seq: u64) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{first_seq:012}"));
    PathBuf::from(s)
}

/// The last line of a file (without its newline), or None for an empty file. A file that does
/// not end with a newline ends with a damaged record: an error.
pub(super) fn last_line(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let read = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(read)?;
    let len = f.metadata().map_err(read)?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    loop {
        let step = pos.min(64 * 1024);
        pos -= step;
        let mut chunk = vec![0u8; step as usize];
        f.seek(SeekFrom::Start(pos))
            .and_then(|_| f.read_exact(&mut chunk))
            .map_err(read)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        if tail.last() != Some(&b'\n') {
            return Err(Error::IncompleteLastLine(path.to_path_buf()));
        }
        let body = &tail[..tail.len() - 1];
        if let Some(i) = body.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(body[i + 1..].to_vec()));
        }
        if pos == 0 {
            return Ok(Some(body.to_vec()));
        }
    }
}

pub(super) fn first_line(path: &Path) -> Option<Vec<u8>> {
    use std::io::BufRead;
    let f = File::open(path).ok()?;
    let mut line = Vec::new();
    std::io::BufReader::new(f)
        .read_until(b'\n', &mut line)
        .ok()?;
    line.pop().filter(|&c| c == b'\n')?;
    Some(line)
}

#[derive(Deserialize)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) time: Option<String>,
}

pub(super) fn head(line: &[u8], path: &Path) -> Result<Head, Error> {
    serde_json::from_slice(line).map_err(|source| Error::LastRecord {
        path: path.to_path_buf(),
        source,
    })
}

/// The rotated files of `path`, oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix(&name)
                        .and_then(|r| r.strip_prefix('.'))
                        .is_some_and(|r| r.len() == 12 && r.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Writer {
    /// Opens the current file, continuing the chain of what is already there (the current file,
    /// else the newest rotated file).
    pub(super) fn open(cfg: &AuditConfig, path: PathBuf) -> Result<Writer, Error> {
        let open = |source| Error::Open {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(open)?;
        let committed = file.metadata().map_err(open)?.len();
        let mut w = Writer {
            path: path.clone(),
            file,
            committed,
            buf: Vec::new(),
            first: None,
            seq: 0,
            prev: GENESIS.to_string(),
            rotated_from: None,
            max_bytes: cfg.max_bytes.max(1),
            max_age: cfg.max_age_secs,
            unsynced: false,
            cache: HashMap::new(),
        };
        if let Some(last) = last_line(&path)? {
            w.seq = head(&last, &path)?.seq + 1;
            w.prev = sha256_hex(&last);
            let h = first_line(&path).and_then(|l| serde_json::from_slice::<Head>(&l).ok());
            w.first = h.map(|h| {
                let t = h.time.as_deref().and_then(parse_rfc3339);
                (h.seq, t.unwrap_or_else(now_secs))
            });
        } else if let Some(r) = rotated_files(&path).last() {
            if let Some(last) = last_line(r)? {
                w.seq = head(&last, r)?.seq + 1;
                w.prev = sha256_hex(&last);
                w.rotated_from = r.file_name().map(|n| n.to_string_lossy().into_owned());
            }
        }
        Ok(w)
    }

    pub(super) fn derived(&mut self, s: &Stmt) -> Arc<Derived> {
        let Some(sql) = &s.sql else {
            return Arc::new(Derived {
                fingerprint: None,
                tables: Vec::new(),
            });
        };
        let key = s
            .resolve
            .as_ref()
            .map(|r| (r.snapshot.epoch, r.search_path.clone()));
        let key = key.map(|(e, p)| (e, p, sql.clone()));
        if let Some(d) = key.as_ref().and_then(|k| self.cache.get(k)) {
            return d.clone();
        }
        let d = stacker::grow(STACK, || Derived {
            fingerprint: fingerprint(sql),
            tables: s
                .resolve
                .as_ref()
                .map(|r| {
                    crate::rewrite::rewrite(
                        sql,
                        &SessionCtx {
                            prot: &r.snapshot.prot,
                            search_path: &r.search_path,
                            path_at_start: true,
                        },
                    )
                    .relations
                })
                .unwrap_or_default(),
        });
        let d = Arc::new(d);
        if let Some(k) = key {
            if self.cache.len() >= DERIVED_CACHE {
                self.cache.clear();
            }
            self.cache.insert(k, d.clone());
        }
        d
    }

    /// Appends one record to the batch, rotating first when the current file is full or old.
    pub(super) fn record(&mut self, e: &Event) {
        let (mut message, mut fingerprint, mut decision, mut refusal, mut tables, mut rows) =
            (None, None, None, None, None, None);
        let (event, time) = match &e.kind {
            Kind::Start => ("session_start", e.time),
            Kind::End => ("session_end", e.time),
            Kind::Statement(s) => {
                let d = self.derived(s);
                message = Some(s.message);
                fingerprint = Some(d.fingerprint.clone());
                decision = Some(match &*s.decision {
                    Decision::Pass => "pass",
                    Decision::Rewrite(_) => "rewrite",
                    Decision::Refuse(_) => "refuse",
                });
                if let Decision::Refuse(r) = &*s.decision {
                    refusal = Some(log_refusal(r, s.sql.as_deref()));
                }
                tables = Some(d.tables.clone());
                rows = Some(s.rows);
                ("statement", s.time)
            }
        };
        let now = now_secs();
        if self.committed + self.buf.len() as u64 > 0 {
            let full = self.committed + self.buf.len() as u64 >= self.max_bytes;
            let old = self
                .max_age
                .zip(self.first)
                .is_some_and(|(age, (_, t))| now.saturating_sub(t) >= age);
            if full || old {
                self.rotate();
            }
        }
        let info = &e.session;
        let prev = std::mem::take(&mut self.prev);
        let line = Line {
            seq: self.seq,
            time: rfc3339(time),
            event,
            session: &info.id,
            role: &info.role,
            client: info.client.as_deref(),
            database: &info.database,
            message,
            fingerprint,
            decision,
            refusal,
            tables,
            rows,
            rotated_from: self.rotated_from.take(),
            prev: &prev,
        };
        let bytes = match serde_json::to_vec(&line) {
            Ok(b) => b,
            Err(err) => {
                // Serializing plain strings and numbers cannot fail; keep the chain as it was.
                tracing::error!("audit record could not be serialized: {err}");
                self.prev = prev;
                return;
            }
        };
        self.prev = sha256_hex(&bytes);
        if self.first.is_none() {
            self.first = Some((self.seq, now));
        }
        self.seq += 1;
        self.buf.extend_from_slice(&bytes);
        self.buf.push(b'\n');
    }

    /// Hands the batch to the OS. A failed write is undone (the file is cut back to its last
    /// whole record) and retried every second: records are never dropped, and sessions wait
    /// once the queue is full.
    pub(super) fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut warned = false;
        loop {
            match self.file.write_all(&self.buf) {
                Ok(()) => break,
                Err(e) => {
                    if !warned {
                        tracing::error!(
                            "writing the audit log {} failed, retrying every second (masked sessions wait once its queue is full): {e}",
                            self.path.display()
                        );
                        warned = true;
                    }
                    let _ = self.file.set_len(self.committed);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        self.committed += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced = true;
    }

    pub(super) fn sync(&mut self) {
        self.write_out();
        if self.unsynced {
            if let Err(e) = self.file.sync_data() {
                tracing::error!("fdatasync of the audit log failed: {e}");
            }
            self.unsynced = false;
        }
    }

    /// Renames the current file to `<path>.<first seq>` and continues the chain in a new one.
    pub(super) fn rotate(&mut self) {
        self.sync();
        let first = self.first.map_or(self.seq, |f| f.0);
        let to = rotated_name(&self.path, first);
        if to.exists() {
            tracing::error!(
                "cannot rotate the audit log: {} exists; writing on in {}",
                to.display(),
                self.path.display()
            );
            return;
        }
        if let Err(e) = std::fs::rename(&self.path, &to) {
            tracing::error!(
                "cannot rotate the audit log {}: {e}; writing on in it",
                self.path.display()
            );
            return;
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                self.file = f;
                self.committed = 0;
                self.first = None;
                self.rotated_from = to.file_name().map(|n| n.to_string_lossy().into_owned());
                if let Some(dir) = self.path.parent() {
                    // The rename and the new file survive a crash.
                    if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    }) {
                        let _ = d.sync_all();
                    }
                }
            }
            Err(e) => {
                // Keep writing to the renamed file (still open): the chain stays whole.
                tracing::error!(
                    "cannot create a new audit log {}: {e}; writing on in {}",
                    self.path.display(),
                    to.display()
                );
                self.path = to;
            }
        }
    }
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens the log (continuing its chain) and starts the writer. Must run inside a tokio runtime.
pub fn start(cfg: &AuditConfig, base_dir: &Path) -> Result<Audit, Error> {
    let path = base_dir.join(&cfg.path);
    let mut w = Writer::open(cfg, path)?;
    let (tx, mut rx) = mpsc::channel::<Cmd>(cfg.queue.max(1));
    let interval = Duration::from_millis(cfg.fsync_interval_ms);
    if !interval.is_zero() {
        // Wakes the writer so unsynced records get their fdatasync within about `interval`
        // even when no more come. A weak sender: it does not keep the writer alive.
        let weak = tx.downgrade();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((interval / 2).max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(tx) = weak.upgrade() else { break };
                if tx.send(Cmd::Tick).await.is_err() {
                    break;
                }
            }
        });
    }
    // The writer: blocking file I/O on tokio's blocking pool, never on a runtime worker. It ends
    // when every sender is gone (the runtime drops the sessions and the shared state).
    tokio::task::spawn_blocking(move || {
        let mut last_sync = Instant::now();
        while let Some(first) = rx.blocking_recv() {
            let mut flushes = Vec::new();
            let mut next = Some(first);
            let mut n = 0;
            while let Some(c) = next.take() {
                match c {
                    Cmd::Event(e) => w.record(&e),
                    Cmd::Flush(t) => flushes.push(t),
                    Cmd::Tick => {}
                }
                n += 1;
                if n < 4096 {
                    next = rx.try_recv().ok();
                }
            }
            w.write_out();
            if !flushes.is_empty() || (w.unsynced && last_sync.elapsed() >= interval) {
                w.sync();
                last_sync = Instant::now();
            }
            for t in flushes {
                let _ = t.send(());
            }
        }
        w.sync();
    });
    Ok(Audit { tx })
}

//! Verification: `pgredact audit verify` walks the hash chain.

use super::*;

#[derive(Deserialize)]
pub(super) struct Checked {
    pub(super) seq: u64,
    pub(super) prev: String,
    #[serde(default)]
    pub(super) rotated_from: Option<String>,
}

/// The whole content of one audit log file.
pub(super) fn read_whole(path: &Path) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| Error::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// Checks that record `rec` (line `li` of file `fi`) follows `last` (sequence number and hash
/// of the record before it; None for the first record read), and that only the first line of
/// a later file names the file it was rotated from.
pub(super) fn check_link(
    rec: &Checked,
    last: Option<&(u64, String)>,
    li: usize,
    fi: usize,
) -> Result<(), Break> {
    match last {
        None => {
            if rec.seq == 0 && rec.prev != GENESIS {
                return Err(Break::FirstPrev);
            }
        }
        Some((seq, hash)) => {
            if rec.seq != seq + 1 {
                return Err(Break::Seq {
                    seq: rec.seq,
                    prev: *seq,
                });
            }
            if &rec.prev != hash {
                return Err(Break::PrevMismatch);
            }
        }
    }
    if li == 0 && fi > 0 && last.is_some() && rec.rotated_from.is_none() {
        return Err(Break::NoRotatedFrom);
    }
    if li > 0 && rec.rotated_from.is_some() {
        return Err(Break::StrayRotatedFrom);
    }
    Ok(())
}

/// Checks the chain across `files` (oldest first): every line parses, `seq` goes up by one,
/// `prev` is the SHA-256 of the line before, the first record of every file after the first says
/// `rotated_from`. Returns a summary, or where and why the chain breaks first.
pub fn verify(files: &[PathBuf]) -> Result<String, Error> {
    if files.is_empty() {
        return Err(Error::NoFiles);
    }
    let mut last: Option<(u64, String)> = None;
    let mut start: Option<(u64, String)> = None;
    let mut count = 0u64;
    for (fi, path) in files.iter().enumerate() {
        let bytes = read_whole(path)?;
        if bytes.is_empty() {
            continue;
        }
        let whole = bytes.last() == Some(&b'\n');
        let body = if whole {
            &bytes[..bytes.len() - 1]
        } else {
            &bytes[..]
        };
        let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        for (li, line) in lines.iter().enumerate() {
            let broken = |why| Error::Broken {
                file: path.clone(),
                line: li + 1,
                why,
            };
            if !whole && li + 1 == lines.len() {
                return Err(broken(Break::IncompleteLine));
            }
            let rec: Checked =
                serde_json::from_slice(line).map_err(|e| broken(Break::NotARecord(e)))?;
            check_link(&rec, last.as_ref(), li, fi).map_err(broken)?;
            if last.is_none() {
                start = Some((rec.seq, rec.prev.clone()));
            }
            last = Some((rec.seq, sha256_hex(line)));
            count += 1;
        }
    }
    let Some((from, anchor)) = start else {
        return Ok(format!("ok: {} file(s), no records", files.len()));
    };
    let (to, hash) = last.unwrap_or_default();
    let anchored = if from == 0 {
        "from the first record".to_string()
    } else {
        format!("from seq {from}, which chains to an earlier record with hash {anchor} (earlier files not given)")
    };
    Ok(format!(
        "ok: {count} records in {} file(s), seq {from}..{to}, {anchored}; last record's hash {hash}",
        files.len()
    ))
}

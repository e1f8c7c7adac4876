//! Cancel keys: pgredact's own keys mapped to the backends', cancel requests served here or
//! forwarded to the peer instance that issued the key.

use super::lifecycle::within;
use super::peers;
use super::shared::Shared;
use crate::sync::lock;
use crate::wire::startup::Startup;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub(crate) struct CancelGuard {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: (i32, i32),
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        lock(&self.shared.cancels).remove(&self.key);
    }
}

/// A cancel request from a client (or forwarded by a peer): served here when the key is this
/// instance's, forwarded once to the peer whose id the key carries otherwise (`peers`).
pub(crate) async fn cancel_request(shared: &Shared, pid: i32, key: i32, from_peer: bool) {
    let own = shared.identity.peer_id;
    let owner = peers::peer_of(pid);
    if own == 0 || from_peer || owner == own {
        let outcome = if cancel(shared, pid, key).await {
            "local"
        } else {
            "unknown"
        };
        crate::metrics::cancel_request(outcome);
        return;
    }
    let Some(addr) = shared.peer_addrs.get(&owner) else {
        tracing::warn!("a cancel request names peer {owner}, which [peering.peers] does not list");
        crate::metrics::cancel_request("unroutable");
        return;
    };
    let packet = Startup::Cancel {
        pid,
        key,
        from_peer: true,
    }
    .to_bytes();
    let timeout = shared
        .life
        .settings
        .connect_timeout()
        .unwrap_or(std::time::Duration::from_secs(10));
    match peers::send_packet(addr, &packet, timeout).await {
        Ok(()) => crate::metrics::cancel_request("forwarded"),
        Err(e) => {
            tracing::warn!("forwarding a cancel request to peer {owner} failed: {e}");
            crate::metrics::cancel_request("unroutable");
        }
    }
}

/// Sends the cancel request for the session that holds client key (pid, key) to its backend;
/// false when no session here holds that key.
pub(crate) async fn cancel(shared: &Shared, pid: i32, key: i32) -> bool {
    let target = lock(&shared.cancels).get(&(pid, key)).copied();
    let Some((upid, ukey)) = target else {
        return false;
    };
    let addr = shared.upstream_addr();
    if let Ok(Ok(mut s)) = within(shared.connect_deadline(), TcpStream::connect(addr)).await {
        let p = Startup::Cancel {
            pid: upid,
            key: ukey,
            from_peer: false,
        }
        .to_bytes();
        let _ = s.write_all(&p).await;
        let _ = s.shutdown().await;
    }
    true
}

pub(crate) fn new_cancel_key(shared: &Shared, upstream: (i32, i32)) -> (i32, i32) {
    let mut m = lock(&shared.cancels);
    loop {
        let k: (i32, i32) = (
            peers::encode_pid(shared.identity.peer_id, rand::random()),
            rand::random(),
        );
        if let std::collections::hash_map::Entry::Vacant(e) = m.entry(k) {
            e.insert(upstream);
            return k;
        }
    }
}

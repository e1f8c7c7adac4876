//! Several pgredact instances behind one address (a TCP load balancer such as HAProxy).
//!
//! - **Cancel routing.** A client sends its CancelRequest on a new connection, which the load
//!   balancer may give to another instance than the one serving the session. With `[peering]`,
//!   every cancel key an instance hands out carries its peer id (bits 22-29 of the process id
//!   field; the rest of the process id and the whole secret key are random), and an instance
//!   that receives a key of another peer forwards it to that peer's address, as a
//!   [`PEER_CANCEL_REQUEST`]: a request the receiver serves locally and never forwards again, so
//!   a wrong peer table cannot make a loop. The key stays the secret, as in PostgreSQL.
//! - **The instance registry** (`pgredact.instances`, in each protected database): every
//!   instance records its name, peer id, version, the fingerprint of its policy and the tables it
//!   protects, at each catalog refresh. `pgredact check` and `/metrics` show instances that run
//!   another policy; an instance does not overwrite the masking views of a policy that a live
//!   instance published; and `pgredact.protected_relations` keeps the relations other live
//!   instances' policies still name (merged, never overwritten).

use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::Client;

/// A cancel request forwarded by a peer (`wire::startup::Startup::Cancel` with `from_peer`).
pub use crate::wire::startup::PEER_CANCEL_REQUEST;

/// The lowest bit of the peer id in a client-facing process id.
const PEER_SHIFT: u32 = 22;
const LOW_MASK: i32 = (1 << PEER_SHIFT) - 1;

/// A client-facing process id: `random` with the peer id in bits 22-29 (0: no peering, 30 random
/// bits). Always positive.
pub fn encode_pid(peer_id: u8, random: i32) -> i32 {
    if peer_id == 0 {
        random & 0x3fff_ffff
    } else {
        (i32::from(peer_id) << PEER_SHIFT) | (random & LOW_MASK)
    }
}

/// The peer id a client-facing process id carries.
pub fn peer_of(pid: i32) -> u8 {
    ((pid >> PEER_SHIFT) & 0xff) as u8
}

/// Sends `packet` to `addr` and closes; errors are the caller's to log (a cancel has no answer).
pub async fn send_packet(addr: &str, packet: &[u8], timeout: Duration) -> Result<(), super::Error> {
    let send = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        s.write_all(packet)
            .await
            .map_err(|e| format!("writing to {addr}: {e}"))?;
        let _ = s.shutdown().await;
        Ok(())
    };
    tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| format!("{addr} did not accept the connection within {timeout:?}"))
        .and_then(|r| r)
        .map_err(super::Error::Peer)
}

/// Who this process is, as the registry records it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `host/listen address`: stable across restarts of the same instance.
    pub name: String,
    /// The `[peering]` peer id, 0 without peering.
    pub peer_id: u8,
}

impl Identity {
    pub fn new(cfg: &crate::config::Config) -> Identity {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into());
        Identity {
            name: format!("{host}/{}", cfg.listen),
            peer_id: cfg.peering.as_ref().map_or(0, |p| p.peer_id),
        }
    }
}

/// An instance is live while its last record is younger than this. Instances record themselves
/// at every catalog refresh (every `catalog_refresh_secs`, 5 s by default) and remove their
/// record when they stop.
pub const LIVE_SECS: i32 = 60;

/// One row of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub peer_id: Option<i32>,
    pub version: String,
    pub fingerprint: Option<String>,
    /// Seconds since its last record.
    pub age_secs: i64,
}

/// Records this instance with its policy (fingerprint and the tables it names).
pub async fn register(
    client: &Client,
    me: &Identity,
    policy: Option<&crate::policy::DatabasePolicy>,
) -> Result<(), tokio_postgres::Error> {
    let fp = policy.map(|p| p.fingerprint());
    let tables: Vec<String> = policy
        .map(|p| p.tables.values().map(|t| t.qualified()).collect())
        .unwrap_or_default();
    let peer = (me.peer_id != 0).then_some(i32::from(me.peer_id));
    client
        .execute(
            "INSERT INTO pgredact.instances AS i (instance, peer_id, version, policy_fingerprint, policy_tables) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (instance) DO UPDATE SET peer_id = EXCLUDED.peer_id, version = EXCLUDED.version, \
               policy_fingerprint = EXCLUDED.policy_fingerprint, policy_tables = EXCLUDED.policy_tables, \
               seen_at = pg_catalog.now(), \
               started_at = CASE WHEN i.seen_at < pg_catalog.now() OPERATOR(pg_catalog.-) \
                                      pg_catalog.make_interval(secs => $6) \
                                 THEN pg_catalog.now() ELSE i.started_at END",
            &[
                &me.name,
                &peer,
                &env!("CARGO_PKG_VERSION"),
                &fp,
                &tables,
                &f64::from(LIVE_SECS),
            ],
        )
        .await?;
    Ok(())
}

/// Removes this instance's record (at shutdown).
pub async fn unregister(client: &Client, me: &Identity) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM pgredact.instances WHERE instance = $1",
            &[&me.name],
        )
        .await?;
    Ok(())
}

/// The live instances, this one included, by name.
pub async fn live(client: &Client) -> Result<Vec<Instance>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT instance, peer_id, version, policy_fingerprint, \
                    pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.now() OPERATOR(pg_catalog.-) seen_at))::int8 \
             FROM pgredact.instances \
             WHERE seen_at > pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1) \
             ORDER BY instance",
            &[&f64::from(LIVE_SECS)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Instance {
            name: r.get(0),
            peer_id: r.get(1),
            version: r.get(2),
            fingerprint: r.get(3),
            age_secs: r.get(4),
        })
        .collect())
}

/// The live instance (not this one) whose policy is the one published in the database, when the
/// published policy is not `own_fingerprint`'s: its masking views are that instance's, and this
/// one must not overwrite them.
pub async fn published_by_other(
    client: &Client,
    me: &Identity,
    own_fingerprint: &str,
) -> Result<Option<(String, String)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT i.instance, i.policy_fingerprint FROM pgredact.policy p \
             JOIN pgredact.instances i ON i.policy_fingerprint = p.spec OPERATOR(pg_catalog.->>) 'fingerprint' \
             WHERE p.id AND i.policy_fingerprint <> $1 AND i.instance <> $2 \
               AND i.seen_at > pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $3) \
             ORDER BY i.seen_at DESC LIMIT 1",
            &[&own_fingerprint, &me.name, &f64::from(LIVE_SECS)],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// What the registry says of the policies in force: the live instances whose policy differs
/// from `own_fingerprint`, as `name (fingerprint)`.
pub fn disagreements(instances: &[Instance], me: &Identity, own_fingerprint: &str) -> Vec<String> {
    instances
        .iter()
        .filter(|i| i.name != me.name && i.fingerprint.as_deref() != Some(own_fingerprint))
        .map(|i| {
            format!(
                "{} (peer {}, policy {})",
                i.name,
                i.peer_id.map_or("-".into(), |p| p.to_string()),
                i.fingerprint.as_deref().unwrap_or("none")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_carry_the_peer_id() {
        for peer in [1u8, 2, 17, 255] {
            for r in [0, 1, -1, i32::MAX, i32::MIN, 0x1234_5678] {
                let pid = encode_pid(peer, r);
                assert!(pid > 0, "{peer} {r}: {pid}");
                assert_eq!(peer_of(pid), peer);
                assert_eq!(pid & LOW_MASK, r & LOW_MASK);
            }
        }
        // Without peering the process id keeps 30 random bits and stays positive.
        assert_eq!(encode_pid(0, -1), 0x3fff_ffff);
        assert!(encode_pid(0, i32::MIN) >= 0);
    }

    #[test]
    fn disagreements_name_other_policies() {
        let me = Identity {
            name: "a/1".into(),
            peer_id: 1,
        };
        let inst = |n: &str, fp: Option<&str>| Instance {
            name: n.into(),
            peer_id: Some(2),
            version: "x".into(),
            fingerprint: fp.map(str::to_string),
            age_secs: 0,
        };
        let all = vec![
            inst("a/1", Some("old")),
            inst("b/2", Some("f1")),
            inst("c/3", Some("f2")),
            inst("d/4", None),
        ];
        assert_eq!(
            disagreements(&all, &me, "f1"),
            vec![
                "c/3 (peer 2, policy f2)".to_string(),
                "d/4 (peer 2, policy none)".to_string()
            ]
        );
    }
}

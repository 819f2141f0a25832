//! Asking the other members' PostgreSQL directly (not through the DCS): in recovery or not, and
//! how much WAL they have. Used by the leader race and by a demoting leader to pick a rewind source.

use super::Runtime;
use crate::ha::{Lsn, PeerProbe};
use crate::postgres::control::Credentials;
use tokio_postgres::NoTls;

impl Runtime {
    pub(super) async fn probe_peers(&self) -> Vec<PeerProbe> {
        let timeout = self.ha.retry_timeout;
        let superuser = self.pg.superuser.clone();
        let probes = self.last_addrs.iter().filter(|a| a.name != self.name).map(|a| {
            let (name, addr, su) = (a.name.clone(), a.postgres.clone(), superuser.clone());
            let prio = self.last_view.member(&a.name).map_or(1, |m| m.failover_priority);
            async move {
                let answer = match addr {
                    Some(addr) => tokio::time::timeout(timeout, ask_peer(&addr, &su)).await.ok().and_then(Result::ok),
                    None => None,
                };
                PeerProbe {
                    name,
                    in_recovery: answer.map(|a| a.0),
                    timeline: None,
                    wal_position: answer.map(|a| a.1),
                    failover_priority: prio,
                }
            }
        });
        let handles: Vec<_> = probes.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            if let Ok(p) = h.await {
                out.push(p);
            }
        }
        out
    }
}

/// Asks a member's PostgreSQL directly: (in recovery?, WAL position received or written).
pub(super) async fn ask_peer(addr: &str, su: &Credentials) -> Result<(bool, Lsn), String> {
    let (host, port) = addr.rsplit_once(':').ok_or("bad address")?;
    let dsn = format!(
        "host={host} port={port} user={} password={} dbname=postgres connect_timeout=2 application_name=pgha-race",
        su.username, su.password
    );
    let (client, conn) = tokio_postgres::connect(&dsn, NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = client
        .query_one(
            "select pg_is_in_recovery(), (case when pg_is_in_recovery() \
             then greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) else pg_current_wal_lsn() end)::text",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
    let lsn: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
    Ok((in_recovery, lsn.and_then(|s| Lsn::parse(&s)).unwrap_or_default()))
}

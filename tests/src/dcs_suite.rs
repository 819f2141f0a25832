//! The DCS conformance suite: the same checks, run unchanged against every `Dcs` backend (etcd,
//! built-in Raft). Each check takes a `SessionFactory` that opens member sessions on the backend
//! under test and returns what it measured, so tests can print figures.

use consensus::dcs::{ClusterKey, Dcs, DcsError, Expected};
use consensus::kv::WatchEvent;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A session being opened.
pub type SessionFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Arc<dyn Dcs>>> + Send + 'a>>;

/// Opens a session for member `name` with lease `ttl` on the backend under test.
pub trait SessionFactory: Send + Sync {
    fn session<'a>(&'a self, name: &'a str, ttl: Duration) -> SessionFuture<'a>;
}

/// Several members race for the lock at once, round after round: exactly one wins each round,
/// and every loser is told who holds it.
pub async fn leader_lock_has_at_most_one_owner(f: &dyn SessionFactory, rounds: usize) -> anyhow::Result<()> {
    let mut sessions = Vec::new();
    for i in 0..5 {
        sessions.push(f.session(&format!("racer{i}"), Duration::from_secs(10)).await?);
    }
    for round in 0..rounds {
        let results = futures_join_all(sessions.iter().map(|s| {
            let s = s.clone();
            async move { (s.member_name().to_string(), s.acquire_leader().await) }
        }))
        .await;
        let winners: Vec<&String> = results.iter().filter(|(_, r)| r.is_ok()).map(|(n, _)| n).collect();
        anyhow::ensure!(winners.len() == 1, "round {round}: {} winners: {results:?}", winners.len());
        let winner = winners[0].clone();
        for (name, r) in &results {
            if name != &winner {
                match r {
                    Err(DcsError::LockHeld { holder }) if holder == &winner => {}
                    other => anyhow::bail!("round {round}: loser {name} got {other:?}, expected LockHeld by {winner}"),
                }
            }
        }
        let snapshot = sessions[0].snapshot().await?;
        anyhow::ensure!(snapshot.leader().as_deref() == Some(winner.as_str()), "DCS names another leader");
        // Only the holder can release it.
        let other = sessions.iter().find(|s| s.member_name() != winner).ok_or_else(|| anyhow::anyhow!("no loser"))?;
        other.release_leader().await?;
        anyhow::ensure!(
            sessions[0].snapshot().await?.leader().as_deref() == Some(winner.as_str()),
            "a loser released it"
        );
        let holder = sessions.iter().find(|s| s.member_name() == winner).ok_or_else(|| anyhow::anyhow!("no winner"))?;
        holder.release_leader().await?;
        anyhow::ensure!(sessions[0].snapshot().await?.leader().is_none(), "release left the key");
    }
    Ok(())
}

/// A holder that stops refreshing loses the lock: never before its `valid_until`, and at most
/// `ttl + 1 s` after its last refresh. Returns how long after the last refresh the key vanished.
pub async fn silent_holder_loses_the_lock_within_ttl_plus_1s(f: &dyn SessionFactory) -> anyhow::Result<Duration> {
    let ttl = Duration::from_secs(3);
    let watcher = f.session("observer", ttl).await?;
    let holder = f.session("silent", ttl).await?;
    let mut events = watcher.watch(0).await?;
    let refreshed_at = Instant::now();
    let lease = holder.acquire_leader().await?;
    drop(holder); // no refresh, no release: like a frozen or dead node
    let gone_at = loop {
        let Some(event) = tokio::time::timeout(ttl + Duration::from_secs(3), events.recv()).await? else {
            anyhow::bail!("watch ended");
        };
        if matches!(&event, WatchEvent::Delete { key, .. } if key == "leader") {
            break Instant::now();
        }
    };
    anyhow::ensure!(
        gone_at >= lease.valid_until,
        "the lock vanished {:?} before the holder's valid_until",
        lease.valid_until - gone_at
    );
    let after = gone_at - refreshed_at;
    anyhow::ensure!(
        after <= ttl + Duration::from_secs(1),
        "lock vanished only {after:?} after the last refresh (ttl {ttl:?})"
    );
    let taker = f.session("taker", ttl).await?;
    taker.acquire_leader().await?;
    Ok(after)
}

/// A new `ttl` applies from the holder's next refresh (Patroni's `set_ttl`): after growing it
/// from 2 s to 5 s the silent holder's lock outlives the old ttl + 1 s and vanishes within the new
/// ttl + 1 s; after shrinking it from 5 s to 2 s it vanishes within 2 s + 1 s. Returns how long
/// after the last refresh the lock vanished in each case.
pub async fn a_new_ttl_applies_from_the_next_refresh(f: &dyn SessionFactory) -> anyhow::Result<(Duration, Duration)> {
    let (short, long) = (Duration::from_secs(2), Duration::from_secs(5));
    let watcher = f.session("ttl-observer", short).await?;
    let mut measured = Vec::new();
    for (name, from, to) in [("ttl-grows", short, long), ("ttl-shrinks", long, short)] {
        let holder = f.session(name, from).await?;
        holder.acquire_leader().await?;
        holder.touch_member(b"{}").await?;
        holder.set_ttl(to);
        let refreshed_at = Instant::now();
        let lease = holder.refresh_leader().await?;
        holder.touch_member(b"{}").await?;
        anyhow::ensure!(
            lease.valid_until >= refreshed_at + to - Duration::from_millis(500)
                && lease.valid_until <= Instant::now() + to,
            "{name}: the refreshed lease is not of the new ttl {to:?}"
        );
        drop(holder);
        let gone_at = loop {
            let snap = watcher.snapshot().await?;
            let leader = snap.leader();
            let member = snap.get(&ClusterKey::Member(name.to_string())).is_some();
            if leader.as_deref() != Some(name) {
                break Instant::now();
            }
            anyhow::ensure!(member, "{name}: the member key vanished while the lock held");
            anyhow::ensure!(
                refreshed_at.elapsed() <= to + Duration::from_secs(1),
                "{name}: the lock outlived the new ttl {to:?} + 1 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let after = gone_at - refreshed_at;
        anyhow::ensure!(
            after + Duration::from_millis(100) >= to,
            "{name}: the lock vanished after {after:?}, before the new ttl {to:?}"
        );
        measured.push(after);
    }
    Ok((measured[0], measured[1]))
}

/// A holder whose lock expired and was taken by another member learns so on refresh.
pub async fn refresh_after_takeover_reports_the_new_holder(f: &dyn SessionFactory) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(2);
    let old = f.session("old", ttl).await?;
    let new = f.session("new", ttl).await?;
    old.acquire_leader().await?;
    old.refresh_leader().await?;
    let deadline = Instant::now() + ttl * 4;
    loop {
        match new.acquire_leader().await {
            Ok(_) => break,
            Err(DcsError::LockHeld { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => anyhow::bail!("takeover failed: {e}"),
        }
    }
    match old.refresh_leader().await {
        Err(DcsError::LockLost { holder }) => {
            anyhow::ensure!(holder.as_deref() == Some("new"), "LockLost names {holder:?}, expected new");
            Ok(())
        }
        other => anyhow::bail!("the old holder's refresh returned {other:?}, expected LockLost"),
    }
}

/// Compare-and-set: a write with a stale revision fails with Conflict and changes nothing.
pub async fn stale_compare_and_set_fails(f: &dyn SessionFactory) -> anyhow::Result<()> {
    let s = f.session("cas", Duration::from_secs(10)).await?;
    let r1 = s.write(ClusterKey::Config, b"{\"ttl\":10}", Expected::Absent).await?;
    let r2 = s.write(ClusterKey::Config, b"{\"ttl\":20}", Expected::Revision(r1)).await?;
    anyhow::ensure!(r2 > r1, "revision did not grow: {r1} -> {r2}");
    match s.write(ClusterKey::Config, b"{\"ttl\":30}", Expected::Revision(r1)).await {
        Err(DcsError::Conflict { found, .. }) => {
            anyhow::ensure!(found == Some(r2), "Conflict names {found:?}, expected {r2}")
        }
        other => anyhow::bail!("stale write returned {other:?}"),
    }
    match s.write(ClusterKey::Config, b"{}", Expected::Absent).await {
        Err(DcsError::Conflict { .. }) => {}
        other => anyhow::bail!("create over an existing key returned {other:?}"),
    }
    match s.delete(ClusterKey::Config, Expected::Revision(r1)).await {
        Err(DcsError::Conflict { .. }) => {}
        other => anyhow::bail!("stale delete returned {other:?}"),
    }
    let value = s.snapshot().await?.get(&ClusterKey::Config).map(|kv| kv.value.clone());
    anyhow::ensure!(value.as_deref() == Some(&b"{\"ttl\":20}"[..]), "config is {value:?}");
    s.delete(ClusterKey::Config, Expected::Revision(r2)).await?;
    // initialize: exactly one of two racers wins.
    let other = f.session("cas2", Duration::from_secs(10)).await?;
    let (a, b) = tokio::join!(s.initialize(b"7000000000000000001"), other.initialize(b"7000000000000000002"));
    anyhow::ensure!(a? ^ b?, "initialize must have exactly one winner");
    Ok(())
}

/// Member keys are leased: a member that stops touching its key disappears within ttl + 1 s.
pub async fn member_keys_expire(f: &dyn SessionFactory) -> anyhow::Result<Duration> {
    let ttl = Duration::from_secs(3);
    let observer = f.session("observer2", ttl).await?;
    let member = f.session("ephemeral", ttl).await?;
    member.touch_member(b"{\"state\":\"running\"}").await?;
    let touched = Instant::now();
    anyhow::ensure!(
        observer.snapshot().await?.get(&ClusterKey::Member("ephemeral".into())).is_some(),
        "member key missing"
    );
    drop(member);
    let deadline = touched + ttl + Duration::from_secs(1);
    loop {
        if observer.snapshot().await?.get(&ClusterKey::Member("ephemeral".into())).is_none() {
            return Ok(touched.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "member key still there {:?} after the last touch",
            touched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Latency from a write's acknowledgement to its watch event, over `samples` writes.
/// Returns the sorted latencies.
pub async fn watch_latencies(f: &dyn SessionFactory, samples: usize) -> anyhow::Result<Vec<Duration>> {
    let writer = f.session("writer", Duration::from_secs(10)).await?;
    let watcher = f.session("watcher", Duration::from_secs(10)).await?;
    let mut events = watcher.watch(0).await?;
    // Let the watch register before the first write.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let value = format!("{{\"sample\":{i}}}");
        let sent = Instant::now();
        writer.write(ClusterKey::Status, value.as_bytes(), Expected::Any).await?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
            if let WatchEvent::Put { kv, .. } = &event {
                if kv.key == "status" && kv.value == value.as_bytes() {
                    latencies.push(sent.elapsed());
                    break;
                }
            }
        }
    }
    latencies.sort();
    Ok(latencies)
}

/// The p-th percentile (0-100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() * p).div_ceil(100)).saturating_sub(1).min(sorted.len() - 1);
    sorted[idx]
}

async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

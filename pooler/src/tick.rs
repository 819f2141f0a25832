//! The data path's clock: a monotonic reading as one `u64` of nanoseconds ([`Tick`]). Every
//! transaction reads the clock twice and then adds to and subtracts readings several times (the
//! checkout's idle and lifetime checks, the transaction's and query's times, the release).
//! `std::time::Instant` keeps seconds and nanoseconds apart, so each of those is a normalising
//! subtraction or a checked addition of about 40 instructions; on a `Tick` it is one. Read from
//! CLOCK_MONOTONIC, as `Instant` is on Linux.

use std::time::Duration;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A monotonic clock reading, in nanoseconds since an arbitrary start (the system's boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(u64);

impl Tick {
    /// Reads the clock (the vDSO's clock_gettime: no system call).
    pub fn now() -> Tick {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on every Linux.
        // The call cannot fail with these arguments (EFAULT, EINVAL only for bad ones); were
        // it to, `ts` stays 0 and times read as 0, which nothing depends on for safety.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Tick::from_parts(ts.tv_sec, ts.tv_nsec)
    }

    fn from_parts(secs: libc::time_t, nanos: libc::c_long) -> Tick {
        let secs = u64::try_from(secs).unwrap_or(0);
        let nanos = u64::try_from(nanos).unwrap_or(0);
        Tick(secs.saturating_mul(NANOS_PER_SEC).saturating_add(nanos))
    }

    /// The reading `d` later (saturating: a `Duration::MAX` setting never comes).
    pub fn plus(self, d: Duration) -> Tick {
        Tick(self.0.saturating_add(nanos(d)))
    }

    /// The time from `earlier` to this reading; zero if `earlier` is later.
    pub fn since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// [`Tick::since`] in whole microseconds, as the statistics count (no `Duration` made).
    pub fn micros_since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0) / 1_000
    }

    /// Whether `d` has passed from `earlier` to this reading (an addition and a comparison).
    pub fn is_past(self, earlier: Tick, d: Duration) -> bool {
        earlier.plus(d) <= self
    }
}

/// A duration as nanoseconds, saturating at `u64::MAX` (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_same_clock_as_instant() {
        let (i0, t0) = (std::time::Instant::now(), Tick::now());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, i1) = (Tick::now(), std::time::Instant::now());
        // t0..t1 lies inside i0..i1: the same clock, read in between.
        let outer = i1.duration_since(i0);
        let inner = t1.since(t0);
        assert!(inner >= Duration::from_millis(20), "{inner:?}");
        assert!(inner <= outer, "{inner:?} > {outer:?}");
    }

    #[test]
    fn never_goes_back() {
        let mut last = Tick::now();
        for _ in 0..10_000 {
            let now = Tick::now();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn a_duration_max_setting_never_passes() {
        let now = Tick::now();
        assert!(!now.is_past(now, Duration::MAX));
        assert_eq!(now.plus(Duration::MAX), Tick(u64::MAX));
    }

    proptest! {
        #[test]
        fn arithmetic_agrees_with_duration(a in 0u64..(u64::MAX / 4), gap in 0u64..(1u64 << 50), d in 0u64..(1u64 << 50)) {
            let earlier = Tick(a);
            let later = Tick(a + gap);
            prop_assert_eq!(later.since(earlier), Duration::from_nanos(gap));
            prop_assert_eq!(earlier.since(later), Duration::ZERO);
            prop_assert_eq!(later.micros_since(earlier), Duration::from_nanos(gap).as_micros() as u64);
            prop_assert_eq!(later.is_past(earlier, Duration::from_nanos(d)), gap >= d);
            prop_assert_eq!(earlier.plus(Duration::from_nanos(d)), Tick(a + d));
        }

        #[test]
        fn parts_join_as_nanoseconds(secs in 0i64..(1i64 << 33), nanos in 0i64..1_000_000_000) {
            let t = Tick::from_parts(secs as libc::time_t, nanos as libc::c_long);
            prop_assert_eq!(t.0, secs as u64 * NANOS_PER_SEC + nanos as u64);
        }
    }
}

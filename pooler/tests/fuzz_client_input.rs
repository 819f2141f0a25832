//! Byte fuzzer for everything a client can send before and after login (see pooler::fuzz):
//! arbitrary and message-shaped bytes never panic and never make the pooler allocate in
//! proportion to a declared length above the configured max_packet_size. A counting allocator
//! measures the largest single allocation of each run.
//!
//! `cargo nextest run -p pgha-pooler --test fuzz_client_input` runs a quick pass;
//! `FUZZ_SECONDS=600` keeps generating new inputs for that long (scripts/fuzz-pooler).

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static MEASURING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if MEASURING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A message with a tag a client or server uses, a body, and a length word that is usually
/// right and sometimes a lie (huge, negative, short).
fn message() -> impl Strategy<Value = Vec<u8>> {
    let tag = prop::sample::select(b"PBDCSEHQXpFdcfRZTKN".to_vec());
    let body = prop::collection::vec(any::<u8>(), 0..200);
    let lie = prop_oneof![
        6 => Just(None),
        1 => any::<u32>().prop_map(Some),
        1 => prop::sample::select(vec![0u32, 3, 4, 0x3fff_ffff, 0x7fff_ffff, 0xffff_ffff, 1 << 20]).prop_map(Some),
    ];
    (tag, body, lie).prop_map(|(tag, mut body, lie)| {
        // Sprinkle NULs so C-string fields are found.
        if body.len() > 3 {
            let n = body.len();
            body[n / 3] = 0;
            body[n - 1] = 0;
        }
        let len = lie.unwrap_or(body.len() as u32 + 4);
        let mut m = vec![tag];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&body);
        m
    })
}

/// A startup packet, SSLRequest or CancelRequest with arbitrary parameters.
fn startup() -> impl Strategy<Value = Vec<u8>> {
    let code = prop::sample::select(vec![196_608u32, 80_877_102, 80_877_103, 80_877_104, 196_609, 0]);
    // Arbitrary names and values, and the ones a login reads: the tracked parameters, and
    // `options` with PGOPTIONS-shaped settings (escapes, the three spellings, broken ones).
    let known = prop::sample::select(vec!["user", "database", "options", "DateStyle", "application_name"]);
    let name = prop_oneof![2 => "[a-z_]{0,12}", 1 => known.prop_map(str::to_owned)];
    let value = prop_oneof![
        2 => "\\PC{0,20}",
        1 => "((-c ?|--|-)[a-zA-Z_=-]{0,10}=?[a-zA-Z0-9 ,=\\\\-]{0,12} ?){0,3}",
    ];
    let params = prop::collection::vec((name, value), 0..6);
    (code, params, any::<bool>()).prop_map(|(code, params, terminate)| {
        let mut body = code.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        if terminate {
            body.push(0);
        }
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        p
    })
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    let config = prop::collection::vec(any::<u8>(), 2);
    let text = prop_oneof![
        "\\PC{0,120}",
        "(?i)(show|pause|resume|kill|set|reload|shutdown|wait_close|select) [a-z_\"';= ]{0,40}",
        "((-c ?|--|-)[a-zA-Z_=-]{0,10}=?[a-zA-Z0-9 ,=\\\\-]{0,12} ?){0,4}",
        "\"[^\"\n]{0,10}\" \"[^\n]{0,40}\"\n",
        "(n|y|p=tls-unique),(a=x)?,n=,r=[!-~]{0,30}(,c=biws,r=[!-~]{0,40},p=[A-Za-z0-9+/=]{0,50})?",
    ]
    .prop_map(String::into_bytes);
    let body = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..2048),
        3 => (prop::option::of(startup()), prop::collection::vec(message(), 0..12)).prop_map(|(s, ms)| {
            let mut out = s.unwrap_or_default();
            out.extend(ms.concat());
            out
        }),
        1 => text,
    ];
    (config, body).prop_map(|(mut c, b)| {
        c.extend(b);
        c
    })
}

fn check(data: &[u8]) -> Result<(), TestCaseError> {
    LARGEST.store(0, Ordering::Relaxed);
    MEASURING.store(true, Ordering::Relaxed);
    let report = pooler::fuzz::client_input(data);
    MEASURING.store(false, Ordering::Relaxed);
    let largest = LARGEST.load(Ordering::Relaxed);
    // The read buffer may double its capacity once past a message's size; text parsers may
    // copy the input (lossy UTF-8 triples invalid bytes). Nothing may follow a declared length.
    let limit = 4 * report.max_message_len as usize + 4 * data.len() + 64 * 1024;
    prop_assert!(
        report.largest_reservation <= 2 * report.max_message_len as usize + 16,
        "read buffer reserved {} bytes with max_packet_size {}",
        report.largest_reservation,
        report.max_message_len
    );
    prop_assert!(largest <= limit, "allocated {largest} bytes at once for a {}-byte input (limit {limit})", data.len());
    Ok(())
}

#[test]
fn arbitrary_client_bytes_never_panic_or_overallocate() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut total = 0u64;
    let mut round = 0u64;
    loop {
        let seed: u64 = if seconds == 0 { 0x5eed } else { getrandom_seed() ^ round };
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let config = Config { cases: 2000, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
        if let Err(e) = runner.run(&input(), |data| check(&data)) {
            panic!("fuzz failure (round {round}, seed {seed:#x}): {e}");
        }
        total += 2000;
        round += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    println!("fuzz: {total} inputs in {round} rounds, no panic, no over-allocation");
}

fn getrandom_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
}

#[test]
fn a_declared_gigabyte_is_refused_before_any_buffer_grows() {
    // 'P' (read whole) declaring 1 GiB: the framer must refuse it, not ask for 1 GiB.
    let mut data = vec![0u8, 0u8, b'P'];
    data.extend_from_slice(&0x3fff_fff0u32.to_be_bytes());
    data.extend_from_slice(&[1; 64]);
    check(&data).unwrap();
    assert!(LARGEST.load(Ordering::Relaxed) < 1 << 20);
}

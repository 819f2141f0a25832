//! Bad input never takes the pooler down: 20 kinds of malformed startup packets and messages
//! each get an ErrorResponse or a closed connection while another client keeps working, and a
//! client that stalls in the middle of a message holds only its own server connection, which is
//! closed (not pooled half-written) when the client goes.

use harness::pooler::PoolerProcess;
use harness::{PgInstance, PgOptions};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    harness::pooler::startup_packet(params)
}

fn packet(len: i32, rest: &[u8]) -> Vec<u8> {
    let mut p = len.to_be_bytes().to_vec();
    p.extend_from_slice(rest);
    p
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn raw(tag: u8, len: i32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads until the pooler closes the connection; true if it sent an ErrorResponse first.
async fn answer(stream: &mut TcpStream) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(5), read).await.is_ok();
    assert!(closed, "the pooler neither answered nor closed; got {got:?}");
    (got.contains(&b'E'), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kinds_of_malformed_input_are_refused_while_others_keep_working() {
    let mut pg = PgInstance::init("bad-input", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 2\nmax_packet_size = 1048576";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let port = pooler.port();
    let good = pooler.connect().await.unwrap();

    let before_login: Vec<(&str, Vec<u8>)> = vec![
        ("garbage text", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("length below 8", packet(4, &[0, 0, 0, 0])),
        ("negative length", packet(-5, &[0; 8])),
        ("length above 10000", packet(100_000, &[0, 3, 0, 0])),
        ("protocol 2.0", packet(8, &(2u32 << 16).to_be_bytes())),
        ("no user", startup(&[("database", "postgres")])),
        ("unterminated parameter", packet(14, &[0, 3, 0, 0, b'u', b's', b'e', b'r', b'x', b'y'])),
        (
            "non-UTF-8 parameter",
            startup(&[("user", "\u{0}")]).into_iter().map(|b| if b == 0xff { 0xfe } else { b }).collect(),
        ),
        ("SSLRequest with extra bytes", packet(12, &[4, 0xd2, 0x16, 0x2f, 1, 2, 3, 4])),
        ("cancel key of 2 bytes", packet(14, &[4, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 9, 9])),
        ("unknown database", startup(&[("user", "postgres"), ("database", "nope")])),
    ];
    for (what, bytes) in before_login {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = s.write_all(&bytes).await;
        let (error, got) = answer(&mut s).await;
        assert!(error || got.is_empty(), "{what}: unexpected answer {got:?}");
        good.simple_query("select 1").await.unwrap_or_else(|e| panic!("after {what}: {e}"));
    }

    let after_login: Vec<(&str, Vec<u8>)> = vec![
        ("message length below 4", raw(b'Q', 2, b"")),
        ("message above max_packet_size", raw(b'Q', 2_000_000, b"select")),
        ("unknown message tag", message(b'z', b"")),
        ("Sync with a body", message(b'S', b"xx")),
        ("Terminate with a body", message(b'X', b"x")),
        ("password message after login", message(b'p', b"secret\0")),
        ("Parse without terminators", message(b'P', b"stmt")),
        ("Bind of an unknown statement", message(b'B', b"\0nosuch\0\0\0\0\0\0\0")),
        ("Close with a bad kind", message(b'C', b"Zname\0")),
    ];
    for (what, bytes) in after_login {
        let mut s = harness::pooler::raw_login(port).await.unwrap();
        let _ = s.write_all(&bytes).await;
        let (error, got) = answer(&mut s).await;
        assert!(error, "{what}: expected an ErrorResponse, got {got:?}");
        good.simple_query("select 1").await.unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
    assert!(pooler.log().lines().all(|l| !l.contains("panicked")), "{}", pooler.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalled_in_half_a_message_holds_only_its_own_server_which_is_closed_after_it() {
    let mut pg = PgInstance::init("stall", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 2";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let mut stalled = harness::pooler::raw_login(pooler.port()).await.unwrap();
    // A Query announcing 100 bytes of which only 10 arrive.
    let mut half = raw(b'Q', 104, b"select 1 ");
    half.truncate(5 + 10);
    stalled.write_all(&half).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = pooler.connect().await.unwrap();
    for _ in 0..50 {
        other.simple_query("select 1").await.unwrap();
    }
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both server slots serve again, and no half-written Query reached another client: two
    // clients in concurrent transactions both work.
    let a = pooler.connect().await.unwrap();
    let b = pooler.connect().await.unwrap();
    a.batch_execute("begin; select 1").await.unwrap();
    b.batch_execute("begin; select 2").await.unwrap();
    a.batch_execute("commit").await.unwrap();
    b.batch_execute("commit").await.unwrap();
}

/// client_login_timeout: a client that stalls in its startup phase (silent after connecting,
/// half a StartupMessage after its SSLRequest was answered, or no answer to the SCRAM request)
/// is closed once the timeout has passed, with PgBouncer's FATAL once TLS negotiation is
/// behind it, and counted on /metrics; a client that logs in meanwhile and stays is not touched.
/// The silent client reaches the pooler about a second after it connects (tcp_defer_accept =
/// 1, the default: the kernel hands a connection over with its first bytes, or when it
/// resends its SYN-ACK after that long), and its timeout counts from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stall_in_their_login_are_closed_after_client_login_timeout() {
    let mut pg = PgInstance::init("login-timeout", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let metrics = format!("127.0.0.1:{}", harness::ports::free_port().unwrap());
    let settings = format!("auth_type = \"scram-sha-256\"\nclient_login_timeout = 0.6\nmetrics_listen = \"{metrics}\"");
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    let port = pooler.port();
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut halfway = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    halfway.write_all(&packet(8, &[4, 0xd2, 0x16, 0x2f])).await.unwrap();
    let mut answer_n = [0u8; 1];
    halfway.read_exact(&mut answer_n).await.unwrap();
    assert_eq!(&answer_n, b"N");
    let full = startup(&[("user", "postgres"), ("database", "postgres")]);
    halfway.write_all(&full[..full.len() / 2]).await.unwrap();
    // Sends its StartupMessage, gets the SCRAM request, never answers it.
    let mut mid_auth = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    mid_auth.write_all(&full).await.unwrap();
    let mut request = [0u8; 1];
    mid_auth.read_exact(&mut request).await.unwrap();
    assert_eq!(&request, b"R", "no authentication request");
    let good = pooler.connect_dsn(&format!("{} password={}", pooler.dsn("postgres"), pg.password())).await.unwrap();

    for stalled in [&mut halfway, &mut mid_auth] {
        let (error, got) = answer(stalled).await;
        let took = started.elapsed();
        assert!(error, "no ErrorResponse before the close: {got:?}");
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("client_login_timeout") && text.contains("08P01"), "{text}");
        assert!(took >= Duration::from_millis(600), "closed after {took:?}, before the timeout");
        assert!(took < Duration::from_secs(3), "closed only after {took:?}");
    }
    let (_, got) = answer(&mut silent).await;
    assert!(got.is_empty(), "a client that sent nothing got {got:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let scraped = harness::pooler::http_get(&metrics, "/metrics").await.unwrap();
    let timeouts = harness::pooler::sample(&scraped, "pgha_pooler_client_errors_total{kind=\"client_login_timeout\"}");
    assert_eq!(timeouts, Some(3.0), "{scraped}");
    // Logged in before the others timed out, and still served well after.
    tokio::time::sleep(Duration::from_millis(700)).await;
    good.simple_query("select 1").await.unwrap();
}

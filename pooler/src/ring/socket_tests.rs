use super::*;
use crate::ring::executor::block_on;
use std::future::poll_fn;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// A connected TCP pair on 127.0.0.1: (ours for the ring, the peer for a plain thread).
fn tcp_pair() -> (OwnedFd, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (ours, _) = listener.accept().expect("accept");
    peer.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    (OwnedFd::from(ours), peer)
}

/// Runs `f` on its own thread, failing if it takes over 30 s (a lost wake hangs otherwise).
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("finished within 30 s")
}

async fn read_some(socket: &Socket, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| socket.poll_read_buf(cx, buf)).await
}

async fn flush(socket: &Socket) -> io::Result<()> {
    poll_fn(|cx| socket.poll_flush(cx)).await
}

/// A byte pattern that shows reordering or loss.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn echoes_what_the_peer_sends_and_sees_its_close() {
    within(|| {
        let (ours, mut peer) = tcp_pair();
        let client = std::thread::spawn(move || {
            let mut got = Vec::new();
            for msg in [&b"ping"[..], b"a longer message", b"x"] {
                peer.write_all(msg).expect("write");
                let mut buf = vec![0u8; msg.len()];
                peer.read_exact(&mut buf).expect("echo");
                got.push(buf);
            }
            drop(peer);
            got
        });
        let echoed = block_on(async move {
            let socket = Socket::new(ours);
            let mut buf = BytesMut::new();
            let mut total = 0;
            loop {
                let n = read_some(&socket, &mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                total += n;
                socket.write(&buf.split()).expect("write");
            }
            flush(&socket).await.expect("flush");
            total
        })
        .expect("block_on");
        let got = client.join().expect("client");
        assert_eq!(got, vec![b"ping".to_vec(), b"a longer message".to_vec(), b"x".to_vec()]);
        assert_eq!(echoed, 4 + 16 + 1);
    });
}

#[test]
fn megabytes_each_way_arrive_whole_and_in_order() {
    within(|| {
        const LEN: usize = 6 * 1024 * 1024; // more than the provided buffers hold
        let (ours, peer) = tcp_pair();
        let mut peer_reader = peer.try_clone().expect("clone");
        let mut peer_writer = peer;
        let writer = std::thread::spawn(move || {
            for chunk in pattern(LEN).chunks(100_000) {
                peer_writer.write_all(chunk).expect("peer write");
            }
            peer_writer
        });
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; LEN];
            // A slow reader: the ring's sends queue up behind it.
            for chunk in got.chunks_mut(500_000) {
                std::thread::sleep(Duration::from_millis(5));
                peer_reader.read_exact(chunk).expect("peer read");
            }
            got
        });
        let received = block_on(async move {
            let socket = Socket::new(ours);
            // Send everything first (queued behind the slow reader), then read.
            for chunk in pattern(LEN).chunks(70_000) {
                socket.write(chunk).expect("write");
            }
            let mut buf = BytesMut::new();
            let mut next_pause = 0;
            while buf.len() < LEN {
                let n = read_some(&socket, &mut buf).await.expect("read");
                assert!(n > 0, "early end after {} bytes", buf.len());
                // A slow reader too, every 512 kB: more than UNREAD_LIMIT arrives unread, the
                // receive is stopped, and armed again at the next read.
                if buf.len() >= next_pause {
                    next_pause += 512 * 1024;
                    for _ in 0..20 {
                        let nop = executor::submit(opcode::Nop::new().build(), None).expect("nop");
                        executor::Next(nop).await;
                        executor::release(nop);
                    }
                }
            }
            flush(&socket).await.expect("flush");
            buf.to_vec()
        })
        .expect("block_on");
        drop(writer.join());
        let sent = reader.join().expect("reader");
        assert!(received == pattern(LEN), "the bytes read differ from those sent");
        assert!(sent == pattern(LEN), "the bytes sent arrived changed");
    });
}

#[test]
fn dropped_sockets_give_their_buffers_back() {
    within(|| {
        block_on(async {
            // More sockets with unread bytes than there are provided buffers: if a dropped
            // socket kept its buffer, the last receive would never get one.
            for _ in 0..600 {
                let (ours, mut peer) = tcp_pair();
                peer.write_all(&[7u8; 100]).expect("peer write");
                let socket = Socket::new(ours);
                let mut buf = BytesMut::new();
                // Armed; the bytes land in a provided buffer; then dropped unread half the
                // time (the other half read).
                let n = read_some(&socket, &mut buf).await.expect("read");
                assert!(n > 0);
                drop(socket);
                drop(peer);
            }
            let (ours, mut peer) = tcp_pair();
            let socket = Socket::new(ours);
            let mut buf = BytesMut::new();
            let pending = std::future::poll_fn(|cx| Poll::Ready(socket.poll_read_buf(cx, &mut buf).is_pending())).await;
            assert!(pending, "nothing was sent yet");
            // Sockets dropped while their receive is armed and bytes arrive after.
            for _ in 0..600 {
                let (ours, mut p) = tcp_pair();
                let s = Socket::new(ours);
                let mut b = BytesMut::new();
                let armed = std::future::poll_fn(|cx| Poll::Ready(s.poll_read_buf(cx, &mut b).is_pending())).await;
                assert!(armed);
                p.write_all(&[1u8; 200]).expect("peer write");
                drop(s);
                // Let the completion for the dropped socket come in.
                let nop = executor::submit(opcode::Nop::new().build(), None).expect("nop");
                executor::Next(nop).await;
                executor::release(nop);
            }
            peer.write_all(b"still served").expect("peer write");
            let n = read_some(&socket, &mut buf).await.expect("read");
            assert_eq!(&buf[..n], b"still served");
        })
        .expect("block_on");
    });
}

#[test]
fn a_send_to_a_closed_peer_fails_the_next_write() {
    within(|| {
        block_on(async {
            let (ours, peer) = tcp_pair();
            drop(peer);
            let socket = Socket::new(ours);
            let mut failed = None;
            for _ in 0..200 {
                if let Err(e) = socket.write(&[0u8; 1000]) {
                    failed = Some(e);
                    break;
                }
                if let Err(e) = flush(&socket).await {
                    failed = Some(e);
                    break;
                }
            }
            let e = failed.expect("writes to a closed peer fail");
            assert!(matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)), "unexpected error {e}");
        })
        .expect("block_on");
    });
}

#[test]
fn a_flush_behind_a_send_that_cannot_complete_at_once_is_not_left_waiting() {
    within(|| {
        let (ours, mut peer) = tcp_pair();
        let drained = std::thread::spawn(move || {
            // The peer reads nothing for a while: the ring's sends fill the socket buffers.
            std::thread::sleep(Duration::from_millis(300));
            let mut sink = vec![0u8; 1 << 20];
            let mut total = 0usize;
            while total < 8 * 1024 * 1024 + 5 {
                match peer.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            total
        });
        block_on(async move {
            let socket = Socket::new(ours);
            // Fill the socket's buffers (sent and flushed, 1 MB at a time) until a flush
            // takes a while: the next send then cannot complete on submission.
            let chunk = vec![3u8; 1024 * 1024];
            for _ in 0..8 {
                socket.write(&chunk).expect("write");
                flush(&socket).await.expect("flush");
            }
            // One small send with nothing queued behind it, then a flush that waits for it.
            socket.write(b"tail!").expect("write");
            flush(&socket).await.expect("flush");
            drop(socket);
        })
        .expect("block_on");
        assert_eq!(drained.join().expect("peer"), 8 * 1024 * 1024 + 5);
    });
}

#[test]
fn sockets_starved_of_provided_buffers_get_their_bytes_once_others_read() {
    within(|| {
        block_on(async {
            // More sockets with bytes waiting than there are provided buffers (512): the
            // receives of the last ones find none (ENOBUFS) until the first ones are read.
            const N: usize = 700;
            let mut sockets = Vec::new();
            let mut peers = Vec::new();
            for k in 0..N {
                let (ours, mut peer) = tcp_pair();
                peer.write_all(format!("socket {k:04}").as_bytes()).expect("peer write");
                let socket = Socket::new(ours);
                let mut buf = BytesMut::new();
                // Arm each receive without reading what it gets.
                let _ = std::future::poll_fn(|cx| Poll::Ready(socket.poll_read_buf(cx, &mut buf).is_pending())).await;
                assert!(buf.is_empty() || buf.len() == 11);
                sockets.push((socket, buf));
                peers.push(peer);
            }
            // Let every receive complete (with bytes or with ENOBUFS).
            for _ in 0..5 {
                let nop = executor::submit(opcode::Nop::new().build(), None).expect("nop");
                executor::Next(nop).await;
                executor::release(nop);
            }
            for (k, (socket, mut buf)) in sockets.into_iter().enumerate() {
                while buf.len() < 11 {
                    let n = read_some(&socket, &mut buf).await.expect("read");
                    assert!(n > 0, "socket {k} ended early");
                }
                assert_eq!(&buf[..], format!("socket {k:04}").as_bytes());
            }
            drop(peers);
        })
        .expect("block_on");
    });
}

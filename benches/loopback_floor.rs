//! The kernel's floor for deployd's paced fan-out shape: what writing the same bytes to the same
//! number of loopback TCP sockets, at the same pacing, costs a sender that does nothing else.
//!
//! `cargo bench --bench loopback_floor -- --connections 1000 --rate 1000 --seconds 10`
//!
//! One thread writes, to each of `--connections` K sockets (`TCP_NODELAY`, as deployd's), every
//! `--interval-ms` I (5, deployd's `FLUSH_INTERVAL`; 0 = one write per event, Redis's shape)
//! the frames of the events of that interval: `--rate` R events a second of `--frame-bytes` F
//! bytes (the size of a one-line `log` frame of `deployd bench fanout`'s 100-byte lines). A child
//! process (this binary, `--receive`) reads every socket on a one-thread tokio runtime, like
//! the load tool's subscriber child, and reports what it read. The sender's CPU (`getrusage`,
//! user and system apart) per delivery is what no server can go below at this shape on this
//! machine: on loopback the sender's system time also pays for the receiving side's TCP work.
//! No sled, no WebSocket parsing, no runtime, no timers per socket: only the sends.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Shape {
    connections: usize,
    rate: u64,
    seconds: u64,
    frame_bytes: usize,
    interval_ms: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--receive") {
        let addr = args.get(1).expect("--receive ADDR CONNECTIONS");
        let connections: usize = args
            .get(2)
            .and_then(|c| c.parse().ok())
            .expect("CONNECTIONS");
        receive(addr, connections);
        return;
    }
    let shape = Shape {
        connections: flag(&args, "--connections", 1000),
        rate: flag(&args, "--rate", 1000),
        seconds: flag(&args, "--seconds", 10),
        frame_bytes: flag(&args, "--frame-bytes", 190),
        interval_ms: flag(&args, "--interval-ms", 5),
    };
    send(&shape);
}

/// `--name VALUE` among the arguments (cargo bench adds `--bench`, which is ignored).
fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

fn send(shape: &Shape) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let exe = std::env::current_exe().expect("current exe");
    let child = Command::new(exe)
        .args([
            "--receive",
            &addr.to_string(),
            &shape.connections.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the receiver");
    let mut sockets: Vec<TcpStream> = (0..shape.connections)
        .map(|_| {
            let (socket, _) = listener.accept().expect("accept");
            socket.set_nodelay(true).expect("nodelay");
            socket
        })
        .collect();

    let frame: Vec<u8> = (0..shape.frame_bytes)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let events = shape.rate * shape.seconds;
    let event_gap = Duration::from_secs_f64(1.0 / shape.rate as f64);
    let events_per_write = if shape.interval_ms == 0 {
        1
    } else {
        (shape.rate * shape.interval_ms / 1000).max(1)
    };
    let batch: Vec<u8> = frame.repeat(events_per_write as usize);

    let before = cpu();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut writes = 0u64;
    let mut late = Duration::ZERO;
    while sent < events {
        let take = events_per_write.min(events - sent);
        let due = started + event_gap * (sent + take - 1) as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            late = late.max(now - due);
        }
        let bytes = &batch[..take as usize * frame.len()];
        for socket in &mut sockets {
            socket.write_all(bytes).expect("write");
            writes += 1;
        }
        sent += take;
    }
    let elapsed = started.elapsed();
    let after = cpu();
    drop(sockets);
    let output = child.wait_with_output().expect("receiver");
    let received: u64 = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the receiver's byte count");

    let deliveries = events * shape.connections as u64;
    let expected = deliveries * frame.len() as u64;
    let user = after.0 - before.0;
    let system = after.1 - before.1;
    let per = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "loopback floor: {} connections x {} events/s x {} s, {} B frames, one write per {} ms ({} events per write)",
        shape.connections, shape.rate, shape.seconds, frame.len(), shape.interval_ms, events_per_write
    );
    println!(
        "  {} deliveries in {:.2} s ({:.0}/s), {} writes; latest write {:.1} ms behind its schedule",
        deliveries,
        elapsed.as_secs_f64(),
        deliveries as f64 / elapsed.as_secs_f64(),
        writes,
        late.as_secs_f64() * 1e3
    );
    println!(
        "  sender CPU: user {:.2} s + system {:.2} s = {:.3} µs per delivery ({:.3} user, {:.3} system), {:.2} µs per write",
        user.as_secs_f64(),
        system.as_secs_f64(),
        per(user + system, deliveries),
        per(user, deliveries),
        per(system, deliveries),
        per(user + system, writes),
    );
    println!(
        "  receiver read {} of {} bytes{}",
        received,
        expected,
        if received == expected {
            ""
        } else {
            ": MISMATCH"
        }
    );
    if received != expected {
        std::process::exit(1);
    }
}

/// This process's user and system CPU time so far.
fn cpu() -> (Duration, Duration) {
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// The receiving side: `connections` sockets to `addr`, each read to its end; prints the total.
fn receive(addr: &str, connections: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let total = runtime.block_on(async {
        let mut readers = Vec::with_capacity(connections);
        for _ in 0..connections {
            let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
            readers.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 64 * 1024];
                let mut read = 0u64;
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) => return read,
                        Ok(n) => read += n as u64,
                        Err(err) => panic!("read: {err}"),
                    }
                }
            }));
        }
        let mut total = 0u64;
        for reader in readers {
            total += reader.await.expect("reader");
        }
        total
    });
    println!("{total}");
}

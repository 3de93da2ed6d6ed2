//! Micro-benchmarks of pgwarden's sans-IO hot path: the frame-header parser and the two
//! frame processors of `SessionState` that every byte of every session goes through.
//!
//! Messages are built by hand (type byte + big-endian length + body) to match what pgbench
//! and PostgreSQL put on the wire, so no server is needed. Each iteration gets a fresh
//! `SessionState` (already in `Phase::Ready`), a filled input buffer and an empty output
//! buffer with enough capacity; building those is untimed (`iter_batched_ref`), so what is
//! measured is the framing work plus the copy to the output buffer the relay does anyway.
//!
//! Run with `cargo bench --bench framer` (about a minute); see benches/README.md.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use pgwarden::session::state::{Links, Phase, SessionState};
use pgwarden::wire::frame::{parse_header, Limits};

/// One protocol message: tag, length word counting itself, body.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

/// A DataRow with text columns.
fn data_row(cols: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(cols.len() as i16).to_be_bytes());
    for c in cols {
        body.extend_from_slice(&(c.len() as i32).to_be_bytes());
        body.extend_from_slice(c);
    }
    msg(b'D', &body)
}

/// What `pgbench -S -M prepared` sends per transaction once its statement is prepared:
/// Bind (unnamed portal, statement "P0_1", one text parameter), Execute, Sync.
fn pgbench_prepared_round() -> Vec<u8> {
    let mut bind = Vec::new();
    cstr(&mut bind, ""); // portal
    cstr(&mut bind, "P0_1"); // statement
    bind.extend_from_slice(&0i16.to_be_bytes()); // parameter format codes: all text
    bind.extend_from_slice(&1i16.to_be_bytes()); // one parameter
    bind.extend_from_slice(&7i32.to_be_bytes());
    bind.extend_from_slice(b"4871203");
    bind.extend_from_slice(&0i16.to_be_bytes()); // result format codes: all text
    let mut exec = Vec::new();
    cstr(&mut exec, ""); // portal
    exec.extend_from_slice(&0i32.to_be_bytes()); // no row limit
    let mut v = msg(b'B', &bind);
    v.extend(msg(b'E', &exec));
    v.extend(msg(b'S', b""));
    v
}

/// What `pgbench -S -M simple` sends per transaction.
fn simple_query() -> Vec<u8> {
    let mut body = Vec::new();
    cstr(
        &mut body,
        "SELECT abalance FROM pgbench_accounts WHERE aid = 4871203;",
    );
    msg(b'Q', &body)
}

/// The server's answer to one `pgbench -S -M prepared` round:
/// BindComplete, DataRow, CommandComplete, ReadyForQuery.
fn typical_response() -> Vec<u8> {
    let mut v = msg(b'2', b"");
    v.extend(data_row(&[b"0"]));
    let mut cc = Vec::new();
    cstr(&mut cc, "SELECT 1");
    v.extend(msg(b'C', &cc));
    v.extend(msg(b'Z', b"I"));
    v
}

/// `SELECT * FROM pgbench_accounts LIMIT 1000` over the simple protocol: RowDescription,
/// 1,000 DataRows (aid, bid, abalance, filler char(84)), CommandComplete, ReadyForQuery.
/// About 112 KB.
fn thousand_rows() -> Vec<u8> {
    let mut rd = Vec::new();
    rd.extend_from_slice(&4i16.to_be_bytes());
    for (name, oid, size, typmod) in [
        ("aid", 23u32, 4i16, -1i32),
        ("bid", 23, 4, -1),
        ("abalance", 23, 4, -1),
        ("filler", 1042, -1, 88),
    ] {
        cstr(&mut rd, name);
        rd.extend_from_slice(&16384u32.to_be_bytes()); // table oid
        rd.extend_from_slice(&1i16.to_be_bytes()); // column number
        rd.extend_from_slice(&oid.to_be_bytes());
        rd.extend_from_slice(&size.to_be_bytes());
        rd.extend_from_slice(&typmod.to_be_bytes());
        rd.extend_from_slice(&0i16.to_be_bytes()); // text format
    }
    let mut v = msg(b'T', &rd);
    let filler = [b' '; 84];
    for aid in 1..=1000 {
        v.extend(data_row(&[aid.to_string().as_bytes(), b"1", b"0", &filler]));
    }
    let mut cc = Vec::new();
    cstr(&mut cc, "SELECT 1000");
    v.extend(msg(b'C', &cc));
    v.extend(msg(b'Z', b"I"));
    v
}

/// A session that has authenticated and seen its first ReadyForQuery, reached the way the
/// relay reaches it: by feeding AuthenticationOk and ReadyForQuery through `server_frames`.
fn ready_session() -> SessionState {
    let mut s = SessionState::new(Links {
        client_tls: false,
        upstream_tls: false,
    });
    let mut hello = msg(b'R', &0i32.to_be_bytes());
    hello.extend(msg(b'Z', b"I"));
    let mut sin = BytesMut::from(&hello[..]);
    let mut out = BytesMut::new();
    s.server_frames(&mut sin, &mut out)
        .expect("AuthenticationOk + ReadyForQuery are valid");
    assert_eq!(s.phase, Phase::Ready);
    assert!(sin.is_empty());
    s
}

/// Untimed per-iteration input: a ready session, the bytes to process, an output buffer.
fn setup(input: &[u8]) -> (SessionState, BytesMut, BytesMut) {
    (
        ready_session(),
        BytesMut::from(input),
        BytesMut::with_capacity(input.len()),
    )
}

fn bench_parse_header(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_header");
    g.throughput(Throughput::Elements(1));
    let bind = pgbench_prepared_round();
    g.bench_function("bind/frontend", |b| {
        b.iter(|| parse_header(black_box(&bind[..]), black_box(Limits::Frontend)))
    });
    let row = data_row(&[b"0"]);
    g.bench_function("datarow/backend", |b| {
        b.iter(|| parse_header(black_box(&row[..]), black_box(Limits::Backend)))
    });
    g.finish();
}

fn bench_client_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("client_frames");
    for (name, input) in [
        (
            "pgbench_prepared_bind_execute_sync",
            pgbench_prepared_round(),
        ),
        ("simple_query", simple_query()),
    ] {
        // Sanity check outside the timing: everything is forwarded, nothing refused.
        let (mut s, mut cin, mut out) = setup(&input);
        s.client_frames(
            &mut cin,
            &mut out,
            &mut pgwarden::session::verdict::OpenGate,
        )
        .expect("valid client frames");
        assert!(cin.is_empty() && out[..] == input[..]);

        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || setup(&input),
                |(s, cin, out)| {
                    s.client_frames(cin, out, &mut pgwarden::session::verdict::OpenGate)
                        .is_ok()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_server_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("server_frames");
    for (name, input, batch) in [
        (
            "bindcomplete_datarow_commandcomplete_ready",
            typical_response(),
            BatchSize::SmallInput,
        ),
        ("1000_rows", thousand_rows(), BatchSize::LargeInput),
    ] {
        let (mut s, mut sin, mut out) = setup(&input);
        s.server_frames(&mut sin, &mut out)
            .expect("valid server frames");
        assert!(sin.is_empty() && out[..] == input[..] && s.is_idle());

        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || setup(&input),
                |(s, sin, out)| s.server_frames(sin, out).is_ok(),
                batch,
            )
        });
    }

    // The same 1,000 rows arriving as the relay sees them: 16 KiB reads appended to the
    // input buffer, frames split across reads. Includes the copy of each read into `sin`.
    let input = thousand_rows();
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("1000_rows_in_16KiB_reads", |b| {
        b.iter_batched_ref(
            || {
                (
                    ready_session(),
                    BytesMut::with_capacity(32 * 1024),
                    BytesMut::with_capacity(input.len()),
                )
            },
            |(s, sin, out)| {
                for chunk in input.chunks(16 * 1024) {
                    sin.extend_from_slice(chunk);
                    if s.server_frames(sin, out).is_err() {
                        return false;
                    }
                }
                true
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_parse_header, bench_client_frames, bench_server_frames
}
criterion_main!(benches);

//! Criterion benchmarks of the server's per-message CPU work outside storage:
//! parsing a client `send` frame, serializing a `message` frame and splicing
//! each member's `seq` into it,
//! fan-out into connected devices' bounded outboxes, and merging HdrHistograms
//! (what loadgen does per interval and per worker).
//!
//! ```text
//! cargo bench -p chatscale-benches --bench protocol
//! ```

use std::hint::black_box;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use reference_server::chat::splice_seq;
use reference_server::hub::Hub;
use reference_server::metrics::Metrics;
use reference_server::outbox::Outbox;
use reference_server::protocol::{decode_client_frame, ClientFrame, MessageRef};

fn send_frame(text_chars: usize) -> String {
    serde_json::json!({
        "type": "send",
        "req": 17,
        "to": {"channel": "g:42"},
        "client_msg_id": "lg-3-1795847487570123-1795847487570456",
        "text": "é".repeat(text_chars),
    })
    .to_string()
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for chars in [80usize, 100_000] {
        let frame = send_frame(chars);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        // The tagged enum's own deserializer (what the server used before) and
        // the one-pass parse it uses now (`protocol::decode_client_frame`).
        group.bench_with_input(BenchmarkId::new("parse_send", chars), &frame, |b, f| {
            b.iter(|| serde_json::from_str::<ClientFrame>(black_box(f)).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("parse_send_one_pass", chars),
            &frame,
            |b, f| b.iter(|| decode_client_frame(black_box(f)).unwrap()),
        );
        let text = "é".repeat(chars);
        group.bench_with_input(
            BenchmarkId::new("serialize_message", chars),
            &text,
            |b, t| {
                b.iter(|| {
                    serde_json::to_string(&MessageRef {
                        kind: "message",
                        channel: "g:42",
                        id: 123_456,
                        seq: Some(987_654),
                        from: 12,
                        from_device: 34,
                        client_msg_id: "lg-3-1795847487570123-1795847487570456",
                        text: black_box(t),
                        ts: 1_795_847_487_570,
                    })
                    .unwrap()
                })
            },
        );
        // What fan-out does per member: the shared part is serialized once per
        // message (above), then each member's seq is spliced in front of it.
        let shared = serde_json::to_string(&MessageRef {
            kind: "message",
            channel: "g:42",
            id: 123_456,
            seq: None,
            from: 12,
            from_device: 34,
            client_msg_id: "lg-3-1795847487570123-1795847487570456",
            text: &text,
            ts: 1_795_847_487_570,
        })
        .unwrap();
        group.bench_with_input(BenchmarkId::new("splice_seq", chars), &shared, |b, sh| {
            b.iter(|| splice_seq(black_box(sh), 987_654))
        });
    }
    group.finish();
}

/// Fan-out of one frame to every device of `members` users (two devices each),
/// as `App::send` does under the channel lock. The outboxes are drained after
/// each round so they never fill.
fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    for members in [2u64, 100] {
        let hub = Hub::new(Arc::new(Metrics::default()));
        let mut outboxes = Vec::new();
        for user in 1..=members {
            for device in 0..2 {
                let outbox = Arc::new(Outbox::new(1024, 8 << 20));
                hub.register(user, user * 10 + device, outbox.clone());
                outboxes.push(outbox);
            }
        }
        let frame: Utf8Bytes = "x".repeat(200).into();
        let mut drained = Vec::with_capacity(4);
        group.throughput(Throughput::Elements(members * 2));
        group.bench_function(BenchmarkId::new("deliver", members), |b| {
            b.iter(|| {
                for user in 1..=members {
                    black_box(hub.deliver(user, Some(10), &frame));
                }
                for outbox in &outboxes {
                    drained.clear();
                    outbox.take(&mut drained, 4);
                }
            })
        });
    }
    group.finish();
}

fn histogram_merge(c: &mut Criterion) {
    let mut a = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    let mut b = a.clone();
    for i in 0..100_000u64 {
        a.record(100 + i % 50_000).unwrap();
        b.record(1_000 + (i * 7919) % 2_000_000).unwrap();
    }
    c.bench_function("histogram_merge/1h_3digits", |bench| {
        bench.iter(|| {
            let mut merged = a.clone();
            merged.add(black_box(&b)).unwrap();
            merged
        })
    });
}

criterion_group!(benches, codec, fan_out, histogram_merge);
criterion_main!(benches);

//! The NBD transmission codec, per message: request headers decoded (the
//! server's side of every request) and encoded, and the reply headers the
//! server sends: simple replies, structured read data headers, and
//! block-status chunks. Each iteration handles a batch of 256 varied
//! messages; throughput counts messages.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gateways::nbd::proto::{
    chunk, cmd, cmd_flag, decode_request, encode_block_status_chunk, encode_offset_data_header,
    encode_request, encode_simple_reply, state, Descriptor, Request, REQUEST_BYTES,
};
use std::hint::black_box;

const BATCH: usize = 256;

/// Reads and writes of 4 KiB to 1 MiB at scattered offsets, some FUA.
fn requests() -> Vec<Request> {
    (0..BATCH as u64)
        .map(|i| Request {
            flags: if i % 7 == 0 { cmd_flag::FUA } else { 0 },
            command: if i % 3 == 0 { cmd::WRITE } else { cmd::READ },
            cookie: i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            offset_bytes: (i * 7919 % 65536) * 4096,
            len_bytes: 4096 << (i % 9),
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let requests = requests();
    let headers: Vec<[u8; REQUEST_BYTES]> = requests.iter().map(encode_request).collect();
    let mut group = c.benchmark_group("nbd");
    group.throughput(Throughput::Elements(BATCH as u64));

    group.bench_function("decode-request", |b| {
        b.iter(|| {
            for header in black_box(&headers) {
                black_box(decode_request(header).expect("valid header"));
            }
        })
    });
    group.bench_function("encode-request", |b| {
        b.iter(|| {
            for request in black_box(&requests) {
                black_box(encode_request(request));
            }
        })
    });
    group.bench_function("encode-simple-reply", |b| {
        b.iter(|| {
            for request in black_box(&requests) {
                black_box(encode_simple_reply(0, request.cookie));
            }
        })
    });
    group.bench_function("encode-read-data-header", |b| {
        b.iter(|| {
            for r in black_box(&requests) {
                black_box(encode_offset_data_header(
                    chunk::FLAG_DONE,
                    r.cookie,
                    r.offset_bytes,
                    r.len_bytes,
                ));
            }
        })
    });
    for count in [1usize, 16] {
        let descriptors: Vec<Descriptor> = (0..count as u32)
            .map(|i| Descriptor {
                len_bytes: 65536,
                flags: if i % 2 == 0 {
                    0
                } else {
                    state::HOLE | state::ZERO
                },
            })
            .collect();
        let id = BenchmarkId::new("encode-block-status", format!("{count}-extents"));
        group.bench_function(id, |b| {
            b.iter(|| {
                for request in black_box(&requests) {
                    black_box(encode_block_status_chunk(
                        chunk::FLAG_DONE,
                        request.cookie,
                        1,
                        &descriptors,
                    ));
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);

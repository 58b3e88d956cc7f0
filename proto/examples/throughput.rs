//! Codec throughput for 1 MiB data frames: encode and decode, and the async writer/reader
//! pair over an in-memory duplex stream, for incompressible, mixed and zero-ish data.
//!
//! `cargo run --release -p sitrep-proto --example throughput [MiB per case, default 512]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

use std::time::Instant;

use proto::{Decoder, EncodeOpts, Encoder, Frame, FrameReader, FrameWriter, MAX_DATA};

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Half random, half text-like repeats: compresses to roughly 60 %.
fn mixed(n: usize, seed: u64) -> Vec<u8> {
    let mut v = random(n / 2, seed);
    let text = b"sitrep replicates block devices; ";
    while v.len() < n {
        v.extend_from_slice(text);
    }
    v.truncate(n);
    v
}

fn zeroish(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    for (i, b) in random(n / 512, seed).into_iter().enumerate() {
        v[i * 512] = b;
    }
    v
}

fn main() {
    let mib: usize = std::env::args().nth(1).map_or(512, |a| a.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    println!(
        "{:<14} {:>10} {:>12} {:>12} {:>14}",
        "data", "wire/raw", "encode MB/s", "decode MB/s", "stream MB/s"
    );
    for (name, make) in [
        ("incompressible", random as fn(usize, u64) -> Vec<u8>),
        ("mixed", mixed),
        ("zero-ish", zeroish),
    ] {
        // 16 distinct frames, cycled, so the caches do not make it look better than it is.
        let frames: Vec<Frame> = (0..16)
            .map(|i| Frame::Data {
                offset: i * MAX_DATA as u64,
                data: make(MAX_DATA, i + 1),
            })
            .collect();
        let mut enc = Encoder::new(EncodeOpts::default());
        let mut wire = Vec::new();
        let (mut raw, mut sent) = (0u64, 0u64);
        let t = Instant::now();
        for i in 0..mib {
            wire.clear();
            let s = enc.encode(&frames[i % 16], &mut wire).unwrap();
            raw += s.raw_bytes;
            sent += s.wire_bytes;
        }
        let enc_s = t.elapsed().as_secs_f64();

        let encoded: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| {
                let mut w = Vec::new();
                enc.encode(f, &mut w).unwrap();
                w
            })
            .collect();
        let mut dec = Decoder::new();
        let t = Instant::now();
        for i in 0..mib {
            let (f, _) = dec.decode(&encoded[i % 16]).unwrap().unwrap();
            std::hint::black_box(f);
        }
        let dec_s = t.elapsed().as_secs_f64();

        let stream_s = rt.block_on(async {
            let (mut a, mut b) = tokio::io::duplex(4 << 20);
            let frames = frames.clone();
            let t = Instant::now();
            let writer = tokio::spawn(async move {
                let mut w = FrameWriter::new(EncodeOpts::default());
                for i in 0..mib {
                    w.write(&mut a, &frames[i % 16]).await.unwrap();
                }
            });
            let mut r = FrameReader::new();
            for _ in 0..mib {
                std::hint::black_box(r.read(&mut b).await.unwrap());
            }
            writer.await.unwrap();
            t.elapsed().as_secs_f64()
        });
        let mbs = |s: f64| mib as f64 * MAX_DATA as f64 / s / 1e6;
        println!(
            "{name:<14} {:>10.3} {:>12.0} {:>12.0} {:>14.0}",
            sent as f64 / raw as f64,
            mbs(enc_s),
            mbs(dec_s),
            mbs(stream_s)
        );
    }
}

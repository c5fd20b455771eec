//! Criterion version of `bench codec`: JSON vs Protobuf encode and decode of
//! a SensorReading and the design guide's User message, with statistics.

use std::hint::black_box;

use bench::samples;
use common::codec::{Codec, ContentType, WireMessage};
use criterion::{Criterion, criterion_group, criterion_main};

fn codec_pair<M: WireMessage>(c: &mut Criterion, name: &str, message: &M) {
    let codec = Codec::default();
    let mut group = c.benchmark_group(name);
    for content_type in [ContentType::Json, ContentType::Protobuf] {
        let encoded = codec.encode(message, content_type).expect("sample encodes");
        group.bench_function(format!("encode/{content_type}"), |b| {
            b.iter(|| codec.encode(black_box(message), content_type))
        });
        group.bench_function(format!("decode/{content_type}"), |b| {
            b.iter(|| codec.decode::<M>(black_box(&encoded), content_type))
        });
    }
    group.finish();
}

fn codecs(c: &mut Criterion) {
    codec_pair(c, "sensor_reading", &samples::sensor_reading());
    codec_pair(c, "guide_user", &samples::guide_user());
}

criterion_group!(benches, codecs);
criterion_main!(benches);

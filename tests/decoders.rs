//! Decoders of outside bytes never panic and never allocate without bound: the IBT reader and
//! the write-ahead file reader, on arbitrary bytes and on mutated real files (bytes flipped,
//! words overwritten with extreme values, files cut short). Every allocation of each decode is
//! counted by an instrumented global allocator and held to a bound proportional to the input.

use std::alloc::System;
use std::sync::Mutex;

use apexsim::archive::wal::{Wal, WalSession, WalSync, read_wal};
use apexsim::ingest::{ibt, read_frames};
use apexsim::systems::record::{LapClosed, LapSample, RecordChunk};
use proptest::prelude::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocation counter is global: one measured decode at a time.
static MEASURE: Mutex<()> = Mutex::new(());

/// Runs `f`, returning the bytes it allocated in all.
fn allocated<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let region = Region::new(GLOBAL);
    let out = f();
    (out, region.change().bytes_allocated)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ibt")
            .join(name),
    )
    .expect("fixture")
}

/// A mutation of a file: flip bytes, overwrite 32-bit words with extreme values, cut it short.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Word(usize, u32),
    Cut(usize),
}

fn mutation(header_bias: usize) -> impl Strategy<Value = Mutation> {
    let at = prop_oneof![0..header_bias, 0..usize::MAX / 2];
    let word = prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        Just(i32::MAX as u32),
        Just(0x8000_0000),
        Just(0xFFFF_FFFF),
        any::<u32>()
    ];
    prop_oneof![
        (at.clone(), 1u8..=255).prop_map(|(a, x)| Mutation::Flip(a, x)),
        (at.clone(), word).prop_map(|(a, w)| Mutation::Word(a, w)),
        at.prop_map(Mutation::Cut),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        match *m {
            Mutation::Flip(at, x) => {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            Mutation::Word(at, w) => {
                let i = at % bytes.len();
                let end = (i + 4).min(bytes.len());
                bytes[i..end].copy_from_slice(&w.to_le_bytes()[..end - i]);
            }
            Mutation::Cut(at) => bytes.truncate(at % bytes.len()),
        }
    }
    bytes
}

/// Everything the ingest does with a file's bytes before the simulation: headers, variable
/// schema, frames (both readers) and session info.
fn decode_ibt(bytes: &[u8]) -> usize {
    let mut n = 0;
    if let Ok(header) = ibt::IbtHeader::parse(bytes) {
        n += header.schema(bytes).map_or(0, |s| s.variables.len());
        if let Some(yaml) = header.session_yaml(bytes) {
            n += usize::from(pitwall::SessionInfo::parse(&yaml).is_ok());
        }
        n += ibt::frames_direct(bytes, &header).map_or(0, |f| f.len());
    }
    n + read_frames(bytes).map_or(0, |(_, f)| f.len())
}

/// Bound on what decoding `len` bytes may allocate: the frames of at most `len` bytes of
/// records, the schema and session info, with room to spare, never gigabytes.
fn ibt_bound(len: usize) -> usize {
    64 * len + (8 << 20)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_ibt_reader_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (_, used) = allocated(|| decode_ibt(&bytes));
        prop_assert!(used <= ibt_bound(bytes.len()), "{used} bytes for {}", bytes.len());
    }

    #[test]
    fn the_ibt_reader_survives_mutated_real_files(
        v2 in any::<bool>(),
        mutations in proptest::collection::vec(mutation(4096), 1..6),
    ) {
        let name = if v2 {
            "iracing_mercedesw13_redbullring_6s_nolap.ibt"
        } else {
            "iracing_skmodified_newsmyrna_stationary_2s.ibt"
        };
        let bytes = apply(fixture(name), &mutations);
        let (_, used) = allocated(|| decode_ibt(&bytes));
        prop_assert!(used <= ibt_bound(bytes.len()), "{used} bytes for {}", bytes.len());
    }
}

/// A real write-ahead file: three flushes of two cars, one lap closed.
fn real_wal() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = uuid::Uuid::from_u64_pair(1, 2);
    let mut wal = Wal::create(
        dir.path(),
        &WalSession {
            session: id,
            source: "sim".into(),
            track: "oval_simple".into(),
            track_length_m: 1228.3,
            car_model: "GT3 Generic".into(),
            drivers: vec!["AI 01".into(), "AI 02".into()],
            date: "2026-11-25".into(),
            started_at: 0,
        },
        WalSync::Off,
    )
    .expect("wal");
    let car = bevy_ecs::entity::Entity::PLACEHOLDER;
    for flush in 0..3u64 {
        let mut chunk = RecordChunk::default();
        for t in 0..60 {
            for _ in 0..2 {
                chunk.car.push(car);
                chunk.lap.push(1 + u16::from(flush == 2));
                chunk.columns.push(&LapSample {
                    tick: flush * 60 + t,
                    speed_mps: t as f32,
                    ..LapSample::default()
                });
            }
        }
        if flush == 2 {
            chunk.closed.push(LapClosed {
                car,
                session: car,
                lap: 1,
                complete: true,
                valid: true,
                lap_time_s: Some(0.5),
            });
        }
        wal.append(&chunk, |_| 0).expect("append");
    }
    let path = apexsim::archive::wal::wal_path(dir.path(), id);
    drop(wal);
    std::fs::read(path).expect("read")
}

fn decode_wal(bytes: &[u8]) -> (bool, usize) {
    let mut file = tempfile::tempfile().expect("tempfile");
    std::io::Write::write_all(&mut file, bytes).expect("write");
    let (result, used) = allocated(|| read_wal(&file).map(|w| w.laps.len()));
    (result.is_ok(), used)
}

/// Bound on what reading a write-ahead file of `len` bytes may allocate.
fn wal_bound(len: usize) -> usize {
    16 * len + (4 << 20)
}

#[test]
fn the_real_write_ahead_file_reads_whole() {
    let bytes = real_wal();
    let mut file = tempfile::tempfile().expect("tempfile");
    std::io::Write::write_all(&mut file, &bytes).expect("write");
    let contents = read_wal(&file).expect("reads");
    assert_eq!(contents.laps.len(), 2);
    assert_eq!(contents.laps.values().map(|l| l.len()).sum::<usize>(), 360);
    assert_eq!(contents.closed.len(), 1);
    assert!(!contents.torn_tail);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_write_ahead_reader_survives_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let (_, used) = decode_wal(&bytes);
        prop_assert!(used <= wal_bound(bytes.len()), "{used} bytes for {}", bytes.len());
    }

    #[test]
    fn the_write_ahead_reader_survives_mutated_real_files(
        mutations in proptest::collection::vec(mutation(2048), 1..6),
    ) {
        let bytes = apply(real_wal(), &mutations);
        let (_, used) = decode_wal(&bytes);
        prop_assert!(used <= wal_bound(bytes.len()), "{used} bytes for {}", bytes.len());
    }
}

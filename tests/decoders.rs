//! Decoders of outside bytes never panic and never allocate without bound: the IBT reader, the
//! write-ahead file reader, the Racing Coach Parquet reader and the network protocol's frame
//! and datagram decoders and the REST API's query strings, on arbitrary
//! bytes and on mutated real input (bytes flipped, words overwritten with extreme values,
//! input cut short). Every protocol message round-trips through its encoding. Every allocation of each decode is
//! counted by an instrumented global allocator and held to a bound proportional to the input.

use std::alloc::System;
use std::sync::Mutex;

use apexsim::archive::wal::{Wal, WalSession, WalSync, read_wal};
use apexsim::ingest::{ibt, read_frames};
use apexsim::net::protocol::{
    self, CarTelemetry, ClientMessage, FaultKind, GridEntry, PlayerInput, ServerMessage,
    SessionState, Standing, Telemetry,
};
use apexsim::systems::record::{LapClosed, LapSample, RecordChunk};
use proptest::prelude::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use uuid::Uuid;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocation counter is global: one measured decode at a time.
static MEASURE: Mutex<()> = Mutex::new(());

/// Runs `f`, returning the bytes it allocated in all. The counter is the process's: another
/// test's thread allocating meanwhile adds to it, so `f` (deterministic) runs three times and
/// the least is its own.
fn allocated<T>(f: impl Fn() -> T) -> (T, usize) {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let run = || {
        let region = Region::new(GLOBAL);
        let got = f();
        (got, region.change().bytes_allocated)
    };
    let (mut out, mut least) = run();
    for _ in 0..2 {
        let (got, bytes) = run();
        least = least.min(bytes);
        out = got;
    }
    (out, least)
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

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (any::<u32>(), ".{0,40}", ".{0,40}").prop_map(|(protocol_version, token, player_name)| {
            ClientMessage::Authenticate {
                protocol_version,
                token,
                player_name,
            }
        }),
        any::<u32>().prop_map(|client_tick| ClientMessage::Heartbeat { client_tick }),
        uuid().prop_map(|car_config_id| ClientMessage::SelectCar { car_config_id }),
        (uuid(), any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(t, m, a, l)| {
            ClientMessage::CreateSession {
                track_config_id: t,
                max_players: m,
                ai_count: a,
                lap_limit: l,
            }
        }),
        (uuid(), any::<Option<u8>>(), any::<Option<u8>>()).prop_map(|(t, l, a)| {
            ClientMessage::CreateFromTemplate {
                template_id: t,
                lap_limit: l,
                ai_count: a,
            }
        }),
        uuid().prop_map(|session_id| ClientMessage::JoinSession { session_id }),
        Just(ClientMessage::LeaveSession),
        Just(ClientMessage::StartSession),
        Just(ClientMessage::Disconnect),
        prop_oneof![
            Just(FaultKind::Panic),
            Just(FaultKind::NonFinite),
            Just(FaultKind::Stall)
        ]
        .prop_map(|kind| ClientMessage::InjectFault { kind }),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    let standing = (
        any::<u8>(),
        any::<u8>(),
        ".{0,20}",
        any::<u16>(),
        any::<Option<u32>>(),
    )
        .prop_map(|(position, car_index, name, laps, t)| Standing {
            position,
            car_index,
            name,
            laps,
            total_time_s: t.map(|t| f64::from(t) / 1000.0),
            best_lap_s: None,
        });
    prop_oneof![
        (uuid(), any::<u32>()).prop_map(|(player_id, v)| ServerMessage::AuthSuccess {
            player_id,
            server_version: v,
            protocol_version: protocol::PROTOCOL_VERSION,
        }),
        ".{0,60}".prop_map(|reason| ServerMessage::AuthFailure { reason }),
        any::<u32>().prop_map(|server_tick| ServerMessage::HeartbeatAck { server_tick }),
        (any::<u16>(), ".{0,60}")
            .prop_map(|(code, message)| ServerMessage::Error { code, message }),
        (
            uuid(),
            proptest::option::of(".{0,30}"),
            proptest::option::of(".{0,30}"),
            proptest::collection::vec(standing, 0..16)
        )
            .prop_map(|(session_id, fault, ended_by, standings)| {
                ServerMessage::SessionResults {
                    session_id,
                    fault,
                    ended_by,
                    standings,
                }
            }),
        (proptest::option::of(uuid()), ".{0,60}").prop_map(|(session_id, message)| {
            ServerMessage::Announcement {
                session_id,
                message,
            }
        }),
        proptest::collection::vec(
            (any::<u8>(), ".{0,20}", proptest::option::of(uuid())),
            0..16
        )
        .prop_map(|g| ServerMessage::SessionStarting {
            countdown_seconds: 5,
            grid: g
                .into_iter()
                .map(|(car_index, name, player_id)| GridEntry {
                    car_index,
                    name,
                    player_id
                })
                .collect(),
        }),
        Just(ServerMessage::SessionLeft),
        uuid().prop_map(|player_id| ServerMessage::PlayerDisconnected { player_id }),
    ]
}

fn car_telemetry() -> impl Strategy<Value = CarTelemetry> {
    (
        any::<u8>(),
        (
            -protocol::POSITION_LIMIT_CM..=protocol::POSITION_LIMIT_CM,
            -protocol::POSITION_LIMIT_CM..=protocol::POSITION_LIMIT_CM,
            any::<u16>(),
            any::<u16>(),
        ),
        any::<(u8, u8, i8, u16)>(),
        (0..=protocol::PROGRESS_LIMIT_CM, any::<u8>(), any::<u8>()),
    )
        .prop_map(
            |(
                index,
                (x_cm, y_cm, yaw, speed_cmps),
                (throttle, brake, steering, lap),
                (progress_cm, finish_position, flags),
            )| {
                CarTelemetry {
                    index,
                    x_cm,
                    y_cm,
                    yaw,
                    speed_cmps,
                    throttle,
                    brake,
                    steering,
                    lap,
                    progress_cm,
                    finish_position,
                    flags,
                }
            },
        )
}

/// Bound on what the protocol decoders may allocate for `len` bytes, whatever lengths the bytes
/// claim: bincode refuses strings past its limit (`MAX_FRAME_BYTES`) and serde preallocates at
/// most 1 MiB for a sequence, so a few MiB at worst; never gigabytes.
fn frame_bound(len: usize) -> usize {
    4 * len + (4 << 20)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_control_message_round_trips(c in client_message(), s in server_message()) {
        let frame = protocol::encode_frame(&c).expect("encodes");
        prop_assert_eq!(protocol::decode_payload::<ClientMessage>(&frame[4..]).expect("decodes"), c);
        let frame = protocol::encode_frame(&s).expect("encodes");
        prop_assert_eq!(protocol::decode_payload::<ServerMessage>(&frame[4..]).expect("decodes"), s);
    }

    #[test]
    fn every_datagram_round_trips(
        cars in proptest::collection::vec(car_telemetry(), 0..16),
        tick in any::<u32>(),
        ack in any::<u32>(),
        countdown in any::<Option<u16>>(),
        state in prop_oneof![
            Just(SessionState::Lobby),
            Just(SessionState::Countdown),
            Just(SessionState::Racing),
            Just(SessionState::Finished),
        ],
        absent in 0u8..16,
        input in any::<(u32, u32, f32, f32, f32)>(),
    ) {
        let t = Telemetry {
            server_tick: tick,
            input_ack: ack,
            session_state: state,
            countdown_ms: countdown,
            session_cars: cars.len() as u8 + absent,
            cars,
        };
        let bytes = protocol::encode_telemetry(&t).expect("16 cars fit");
        prop_assert!(bytes.len() <= protocol::telemetry_datagram_len(16) + 2);
        prop_assert_eq!(protocol::decode_telemetry(&bytes).expect("decodes"), t);
        let i = PlayerInput { seq: input.0, server_tick_ack: input.1, throttle: input.2, brake: input.3, steering: input.4 };
        let back = protocol::decode_input(&protocol::encode_input(&i).expect("encodes")).expect("decodes");
        // Bit-exact, NaN included.
        prop_assert_eq!(
            (back.seq, back.server_tick_ack, back.throttle.to_bits(), back.brake.to_bits(), back.steering.to_bits()),
            (i.seq, i.server_tick_ack, i.throttle.to_bits(), i.brake.to_bits(), i.steering.to_bits())
        );
    }

    #[test]
    fn the_protocol_decoders_survive_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let (_, used) = allocated(|| {
            let _ = protocol::decode_payload::<ClientMessage>(&bytes);
            let _ = protocol::decode_payload::<ServerMessage>(&bytes);
            let _ = protocol::decode_input(&bytes);
            let _ = protocol::decode_telemetry(&bytes);
        });
        prop_assert!(used <= frame_bound(bytes.len()), "{used} bytes for {}", bytes.len());
    }

    #[test]
    fn the_protocol_decoders_survive_mutated_real_messages(
        c in client_message(),
        s in server_message(),
        mutations in proptest::collection::vec(mutation(64), 1..6),
    ) {
        for frame in [protocol::encode_frame(&c).expect("encodes"), protocol::encode_frame(&s).expect("encodes")] {
            let bytes = apply(frame[4..].to_vec(), &mutations);
            let (_, used) = allocated(|| {
                let _ = protocol::decode_payload::<ClientMessage>(&bytes);
                let _ = protocol::decode_payload::<ServerMessage>(&bytes);
            });
            prop_assert!(used <= frame_bound(bytes.len()), "{used} bytes for {}", bytes.len());
        }
    }
}

/// A real Racing Coach lap file (the partial lap: 234 KB).
fn racing_coach_file() -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/racing-coach-algarve/lap12.parquet"),
    )
    .expect("fixture")
}

/// Reads bytes as a Racing Coach file, the way the import does; the row count or none.
fn decode_racing_coach(bytes: &[u8]) -> Option<usize> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lap.parquet");
    std::fs::write(&path, bytes).expect("write");
    let (rows, _) = allocated(|| apexsim::ingest::racing_coach::read_rows(&path).ok());
    rows
}

/// Bound on reading a Parquet file of `len` bytes: its columns decoded (compression ratios of
/// telemetry stay far below 64) and the footer, never gigabytes.
fn parquet_bound(len: usize) -> usize {
    64 * len + (16 << 20)
}

#[test]
fn the_real_racing_coach_file_reads_whole() {
    assert_eq!(decode_racing_coach(&racing_coach_file()), Some(1346));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_racing_coach_reader_survives_mutated_real_files(
        footer in any::<bool>(),
        mutations in proptest::collection::vec(mutation(8192), 1..5),
    ) {
        let mut bytes = racing_coach_file();
        if footer {
            // The footer (schema, column chunk offsets and sizes) is at the end: aim there.
            bytes.reverse();
            bytes = apply(bytes, &mutations);
            bytes.reverse();
        } else {
            bytes = apply(bytes, &mutations);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lap.parquet");
        std::fs::write(&path, &bytes).expect("write");
        let (_, used) = allocated(|| apexsim::ingest::racing_coach::read_rows(&path).ok());
        prop_assert!(used <= parquet_bound(bytes.len()), "{used} bytes for {}", bytes.len());
    }

    #[test]
    fn the_racing_coach_reader_survives_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lap.parquet");
        std::fs::write(&path, &bytes).expect("write");
        let (rows, used) = allocated(|| apexsim::ingest::racing_coach::read_rows(&path).ok());
        prop_assert!(rows.is_none());
        prop_assert!(used <= parquet_bound(bytes.len()), "{used} bytes for {}", bytes.len());
    }
}

/// Allocation bound of an HTTP body decode: the decoded values and messages are at most a few
/// times the body.
fn http_bound(len: usize) -> usize {
    64 * 1024 + 16 * len
}

/// A real answer of each kind the client reads.
fn http_bodies() -> Vec<Vec<u8>> {
    vec![
        br#"{"status":"success","message":"1555 frames","lap_id":"74e928d6-ee76-59ce-8caa-cce13019b891"}"#.to_vec(),
        br#"{"status":"success","message":"stored","lap_metrics_id":"m-1"}"#.to_vec(),
        br#"{"device_code":"d","user_code":"WXYZ2345","verification_uri":"http://x/device","expires_in":60,"interval":5}"#.to_vec(),
        br#"{"access_token":"t","token_type":"Bearer","device_name":"rig"}"#.to_vec(),
        br#"{"detail":[{"loc":["body","lap","frames",0,"speed"],"msg":"field required","type":"missing"}]}"#.to_vec(),
        br#"{"detail":"authorization_pending"}"#.to_vec(),
    ]
}

/// Every decode the client does of a response body with this status.
fn decode_all(status: u16, body: &[u8]) {
    use apexsim::coach::api;
    use apexsim::coach::client::decode;
    let u = || String::from("http://x");
    let _ = decode::<api::LapUploadResponse>(u(), status, body);
    let _ = decode::<api::MetricsUploadResponse>(u(), status, body);
    let _ = decode::<api::DeviceAuthorizationResponse>(u(), status, body);
    let _ = decode::<api::DeviceTokenResponse>(u(), status, body);
    let _ = decode::<api::HealthCheckResponse>(u(), status, body);
    // The lap lookup takes any JSON body.
    let _ = decode::<serde_json::Value>(u(), status, body);
    let detail = apexsim::coach::client::error_detail(body);
    assert!(
        detail.len() <= 4 * body.len() + 512,
        "{} for {}",
        detail.len(),
        body.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn http_bodies_decode_without_panic_or_unbounded_allocation(
        status in prop_oneof![Just(200u16), Just(400u16), Just(422u16), Just(500u16), 100u16..600],
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let ((), used) = allocated(|| decode_all(status, &bytes));
        prop_assert!(used <= http_bound(bytes.len()), "{used} bytes for {}", bytes.len());
    }

    #[test]
    fn mutated_real_http_bodies_decode_without_panic(
        which in 0usize..6,
        status in prop_oneof![Just(200u16), Just(422u16), Just(503u16)],
        mutations in proptest::collection::vec(mutation(256), 1..4),
    ) {
        let bytes = apply(http_bodies()[which].clone(), &mutations);
        let ((), used) = allocated(|| decode_all(status, &bytes));
        prop_assert!(used <= http_bound(bytes.len()), "{used} bytes for {}", bytes.len());
    }

    #[test]
    fn a_credentials_file_of_any_bytes_is_an_error_or_credentials(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(apexsim::coach::credentials::Credentials::path(dir.path()), &bytes).expect("write");
        let (_, used) = allocated(|| apexsim::coach::credentials::Credentials::load(dir.path()).ok());
        prop_assert!(used <= http_bound(bytes.len()), "{used} bytes for {}", bytes.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A template's `schedule` is outside text: any string parses to a schedule or is refused
    /// with a message, and finding its next time never panics, whatever the clock says.
    #[test]
    fn a_schedule_parses_or_is_refused_and_never_panics(
        text in "[0-9*/,\\- LW#?a-zA-Z]{0,32}",
        at in any::<i64>(),
    ) {
        match apexsim::content::Schedule::parse(&text) {
            Ok(s) => {
                let _ = s.next_at_or_after(at);
                let _ = s.next_at_or_after(1_796_169_600);
            }
            Err(message) => prop_assert!(!message.is_empty()),
        }
    }

    #[test]
    fn a_schedule_of_cron_fields_finds_a_time_at_or_after_the_clock(
        fields in proptest::collection::vec("(\\*|[0-9]{1,2}|\\*/[1-9]|[0-9]-[0-9]{1,2})", 5),
    ) {
        let text = fields.join(" ");
        if let Ok(s) = apexsim::content::Schedule::parse(&text)
            && let Some(next) = s.next_at_or_after(1_796_169_600)
        {
            prop_assert!(next >= 1_796_169_600, "{text}: {next}");
        }
    }
}

/// What the API reads of a query string: the page, every text, number and flag parameter.
fn read_query(query: &str) -> usize {
    let Ok(p) = apexsim::api::Params::parse(Some(query)) else {
        return 0;
    };
    let mut read = 0;
    read += usize::from(p.page(50, apexsim::api::MAX_PAGE).is_ok());
    for name in ["track", "car", "driver", "source", "columns", "older_than"] {
        read += usize::from(matches!(p.text(name), Ok(Some(_))));
    }
    read += usize::from(matches!(p.number("from", i64::MIN, i64::MAX), Ok(Some(_))));
    read += usize::from(matches!(p.flag("valid"), Ok(Some(_))));
    read
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A request's query string is outside bytes: it is parsed or refused, never panics, and
    /// what parsing keeps is bounded by its length.
    #[test]
    fn an_api_query_string_is_read_or_refused_within_bounds(
        query in "([a-z_]{0,12}=?[0-9a-zA-Z%+\\-.,&=]{0,40}&?){0,12}",
        raw in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let (_, bytes) = allocated(|| read_query(&query));
        prop_assert!(bytes <= 64 * query.len() + 4096, "{bytes} bytes for {} of query", query.len());
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (_, bytes) = allocated(|| read_query(&text));
        prop_assert!(bytes <= 64 * text.len() + 4096, "{bytes} bytes for {} of query", text.len());
    }
}

/// A valid record of posted telemetry, as JSON, at session time `t`.
fn telemetry_record(t: u32) -> String {
    format!(
        "{{\"driver\":\"d\",\"session\":\"s\",\"track\":\"oval_simple\",\"car\":\"GT3\",\
         \"time_s\":{t},\"lap\":1,\"lap_dist_pct\":0.5,\"speed_kph\":180.5,\"rpm\":7500,\
         \"gear\":4,\"tire_temps_c\":{{\"lf\":80,\"rf\":81,\"lr\":79,\"rr\":80}}}}"
    )
}

/// What the API makes of a telemetry body: the records parsed and each one checked.
fn read_telemetry(body: &[u8]) -> usize {
    match apexsim::api::parse_telemetry(body) {
        Ok((records, _)) => records.iter().filter(|r| r.check().is_ok()).count(),
        Err(_) => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A posted telemetry body is outside bytes: any bytes, or a good batch with one byte
    /// changed, are parsed or refused, never a panic, with allocations bounded by the length.
    #[test]
    fn a_posted_telemetry_body_is_read_or_refused_within_bounds(
        seed in any::<u64>(),
        len in 0usize..2048,
        records in 1u32..40,
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        // The inputs are made here from a seed, not by proptest element by element: that
        // would allocate beside other tests' measurements all along.
        let raw: Vec<u8> = {
            let _quiet = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly JSON's own characters, so the decoder gets past the first byte.
                    let table = b"{}[],:\"0123456789.e-abcdefghijklmnopqrstuvwxyz_ \\";
                    table[(x % table.len() as u64) as usize]
                })
                .collect()
        };
        let (_, used) = allocated(|| read_telemetry(&raw));
        prop_assert!(used <= 64 * raw.len() + 65_536, "{used} bytes for {}", raw.len());
        // Unmeasured work holds the measuring lock too: its allocations would count in
        // another test's measurement.
        let (mut bytes, good) = {
            let _quiet = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
            let batch = format!(
                "[{}]",
                (0..records).map(telemetry_record).collect::<Vec<_>>().join(",")
            );
            let bytes = batch.into_bytes();
            let good = read_telemetry(&bytes);
            (bytes, good)
        };
        prop_assert_eq!(good, records as usize, "the good batch reads whole");
        let i = at % bytes.len();
        bytes[i] = byte;
        let (_, used) = allocated(|| read_telemetry(&bytes));
        prop_assert!(used <= 64 * bytes.len() + 65_536, "{used} bytes for {}", bytes.len());
    }
}

//! The telemetry datagram (kind 2): what one tick of a session says to one player, in a packed
//! layout of its own so that a datagram's size depends only on its car count. The header
//! ([`TelemetryHeader`]) is written per recipient; each car's record ([`CarTelemetry`],
//! positions and progress quantized to centimetres in 24 bits) is encoded once per tick and
//! copied after it. A datagram may carry only some of the session's cars; [`FieldState`] keeps
//! each car's newest state from them on the client.

use serde::{Deserialize, Serialize};

use super::{KIND_TELEMETRY, MAX_DATAGRAM_BYTES, ProtocolError, SessionState, datagram_body};

/// One tick of a session (datagram kind 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Server tick.
    pub server_tick: u32,
    /// The `seq` of the receiver's latest input applied before this tick (0 = none yet).
    pub input_ack: u32,
    /// Session state.
    pub session_state: SessionState,
    /// Milliseconds to the green light during the countdown.
    pub countdown_ms: Option<u16>,
    /// Cars in the session, whether this datagram carries them or not.
    pub session_cars: u8,
    /// The cars this datagram carries, by index: the receiver's own and those near it every
    /// tick, the others at a lower rate.
    pub cars: Vec<CarTelemetry>,
}

/// One car in [`Telemetry`], quantized. Positions travel in 24 bits (±83.8 km) and the
/// distance along the centerline in 24 unsigned bits (167 km); [`CarTelemetry::quantize`]
/// saturates to those ranges and the encoder clamps values set by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarTelemetry {
    /// Car index in the session.
    pub index: u8,
    /// World X in centimetres, within ±[`POSITION_LIMIT_CM`].
    pub x_cm: i32,
    /// World Y in centimetres, within ±[`POSITION_LIMIT_CM`].
    pub y_cm: i32,
    /// Heading: `yaw / 2π * 65536`, wrapping.
    pub yaw: u16,
    /// Speed in cm/s.
    pub speed_cmps: u16,
    /// Throttle * 255.
    pub throttle: u8,
    /// Brake * 255.
    pub brake: u8,
    /// Steering * 127.
    pub steering: i8,
    /// Lap the car is on (0 before the start line).
    pub lap: u16,
    /// Distance along the centerline in centimetres, at most [`PROGRESS_LIMIT_CM`].
    pub progress_cm: u32,
    /// Finishing position, 0 while racing.
    pub finish_position: u8,
    /// Bit 0: colliding this tick; bit 1: off the track.
    pub flags: u8,
}

/// Bit of [`CarTelemetry::flags`]: in contact with another car.
pub const FLAG_COLLIDING: u8 = 1;
/// Bit of [`CarTelemetry::flags`]: off the track surface.
pub const FLAG_OFF_TRACK: u8 = 2;

/// Largest position magnitude a telemetry datagram carries, in centimetres (24 bits signed).
pub const POSITION_LIMIT_CM: i32 = (1 << 23) - 1;
/// Largest distance along the centerline a telemetry datagram carries, in centimetres
/// (24 bits).
pub const PROGRESS_LIMIT_CM: u32 = (1 << 24) - 1;

impl CarTelemetry {
    /// Quantizes a car's state. Out-of-range values saturate; NaN becomes 0.
    #[allow(clippy::too_many_arguments)]
    pub fn quantize(
        index: u8,
        x_m: f32,
        y_m: f32,
        yaw_rad: f32,
        speed_mps: f32,
        controls: [f32; 3],
        lap: u16,
        progress_m: f32,
        finish_position: Option<u8>,
        flags: u8,
    ) -> Self {
        let [throttle, brake, steering] = controls;
        let turns = (yaw_rad / std::f32::consts::TAU).rem_euclid(1.0);
        Self {
            index,
            x_cm: ((x_m * 100.0).round() as i32).clamp(-POSITION_LIMIT_CM, POSITION_LIMIT_CM),
            y_cm: ((y_m * 100.0).round() as i32).clamp(-POSITION_LIMIT_CM, POSITION_LIMIT_CM),
            yaw: ((turns * 65536.0).round() as u32 & 0xFFFF) as u16,
            speed_cmps: (speed_mps * 100.0).round() as u16,
            throttle: (throttle * 255.0).round() as u8,
            brake: (brake * 255.0).round() as u8,
            steering: (steering * 127.0).round() as i8,
            lap,
            progress_cm: ((progress_m * 100.0).round() as u32).min(PROGRESS_LIMIT_CM),
            finish_position: finish_position.unwrap_or(0),
            flags,
        }
    }

    /// X in metres.
    pub fn x_m(&self) -> f32 {
        self.x_cm as f32 / 100.0
    }
    /// Y in metres.
    pub fn y_m(&self) -> f32 {
        self.y_cm as f32 / 100.0
    }
    /// Heading in radians, in `(-π, π]`.
    pub fn yaw_rad(&self) -> f32 {
        let a = f32::from(self.yaw) / 65536.0 * std::f32::consts::TAU;
        if a > std::f32::consts::PI {
            a - std::f32::consts::TAU
        } else {
            a
        }
    }
    /// Speed in m/s.
    pub fn speed_mps(&self) -> f32 {
        f32::from(self.speed_cmps) / 100.0
    }
    /// Distance along the centerline in metres.
    pub fn progress_m(&self) -> f32 {
        self.progress_cm as f32 / 100.0
    }
}

/// Encodes a telemetry datagram: the header ([`TelemetryHeader`]) and then each car as
/// [`CarTelemetry::write`] packs it.
///
/// # Errors
/// [`ProtocolError::DatagramTooLarge`] when the cars do not fit.
pub fn encode_telemetry(telemetry: &Telemetry) -> Result<Vec<u8>, ProtocolError> {
    let len = telemetry_datagram_len(telemetry.cars.len());
    if len > MAX_DATAGRAM_BYTES || telemetry.cars.len() > usize::from(u8::MAX) {
        return Err(ProtocolError::DatagramTooLarge(len));
    }
    let mut out = Vec::with_capacity(len);
    TelemetryHeader {
        server_tick: telemetry.server_tick,
        input_ack: telemetry.input_ack,
        session_state: telemetry.session_state,
        countdown_ms: telemetry.countdown_ms,
        session_cars: telemetry.session_cars,
    }
    .write(&mut out, telemetry.cars.len() as u8);
    for car in &telemetry.cars {
        car.write(&mut out);
    }
    Ok(out)
}

/// What a telemetry datagram says before its cars. On the wire: the kind byte, the tick and the
/// input acknowledgement (u32 little-endian each), a byte with the session state in its low two
/// bits and bit 7 set when the countdown follows, the countdown (u16, only then), the session's
/// car count and the count of cars that follow (a byte each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryHeader {
    /// See [`Telemetry::server_tick`].
    pub server_tick: u32,
    /// See [`Telemetry::input_ack`].
    pub input_ack: u32,
    /// See [`Telemetry::session_state`].
    pub session_state: SessionState,
    /// See [`Telemetry::countdown_ms`].
    pub countdown_ms: Option<u16>,
    /// See [`Telemetry::session_cars`].
    pub session_cars: u8,
}

const COUNTDOWN_FOLLOWS: u8 = 0x80;

impl TelemetryHeader {
    /// Appends the header for `cars` cars to `out` (the server writes one per recipient and
    /// then copies the cars' records, encoded once per tick, after it).
    pub fn write<B: Extend<u8>>(&self, out: &mut B, cars: u8) {
        let state = match self.session_state {
            SessionState::Lobby => 0,
            SessionState::Countdown => 1,
            SessionState::Racing => 2,
            SessionState::Finished => 3,
        };
        let mut head = [0u8; TELEMETRY_HEADER_BYTES + 2];
        head[0] = KIND_TELEMETRY;
        head[1..5].copy_from_slice(&self.server_tick.to_le_bytes());
        head[5..9].copy_from_slice(&self.input_ack.to_le_bytes());
        let mut at = 10;
        if let Some(ms) = self.countdown_ms {
            head[9] = state | COUNTDOWN_FOLLOWS;
            head[10..12].copy_from_slice(&ms.to_le_bytes());
            at = 12;
        } else {
            head[9] = state;
        }
        head[at] = self.session_cars;
        head[at + 1] = cars;
        out.extend(head[..at + 2].iter().copied());
    }
}

impl CarTelemetry {
    /// Appends the car's [`CAR_TELEMETRY_BYTES`] to `out`: index, x and y (i24), yaw, speed
    /// (u16), throttle, brake, steering (a byte each), lap (u16), progress (u24), finishing
    /// position and flags (a byte each), little-endian. Out-of-range values are clamped.
    pub fn write<B: Extend<u8>>(&self, out: &mut B) {
        let x = self
            .x_cm
            .clamp(-POSITION_LIMIT_CM, POSITION_LIMIT_CM)
            .to_le_bytes();
        let y = self
            .y_cm
            .clamp(-POSITION_LIMIT_CM, POSITION_LIMIT_CM)
            .to_le_bytes();
        let p = self.progress_cm.min(PROGRESS_LIMIT_CM).to_le_bytes();
        let yaw = self.yaw.to_le_bytes();
        let speed = self.speed_cmps.to_le_bytes();
        let lap = self.lap.to_le_bytes();
        let record: [u8; CAR_TELEMETRY_BYTES] = [
            self.index,
            x[0],
            x[1],
            x[2],
            y[0],
            y[1],
            y[2],
            yaw[0],
            yaw[1],
            speed[0],
            speed[1],
            self.throttle,
            self.brake,
            self.steering as u8,
            lap[0],
            lap[1],
            p[0],
            p[1],
            p[2],
            self.finish_position,
            self.flags,
        ];
        out.extend(record);
    }

    fn read(b: &[u8; CAR_TELEMETRY_BYTES]) -> Self {
        let i24 = |lo: u8, mid: u8, hi: u8| i32::from_le_bytes([lo, mid, hi, 0]) << 8 >> 8;
        Self {
            index: b[0],
            x_cm: i24(b[1], b[2], b[3]),
            y_cm: i24(b[4], b[5], b[6]),
            yaw: u16::from_le_bytes([b[7], b[8]]),
            speed_cmps: u16::from_le_bytes([b[9], b[10]]),
            throttle: b[11],
            brake: b[12],
            steering: b[13] as i8,
            lap: u16::from_le_bytes([b[14], b[15]]),
            progress_cm: u32::from_le_bytes([b[16], b[17], b[18], 0]),
            finish_position: b[19],
            flags: b[20],
        }
    }
}

/// Decodes a telemetry datagram.
///
/// # Errors
/// A [`ProtocolError`] naming what is wrong.
pub fn decode_telemetry(bytes: &[u8]) -> Result<Telemetry, ProtocolError> {
    let body = datagram_body(bytes, KIND_TELEMETRY)?;
    let short = |what: &str| ProtocolError::Malformed(format!("telemetry ends before its {what}"));
    let (head, mut rest) = body
        .split_first_chunk::<9>()
        .ok_or_else(|| short("header"))?;
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let session_state = match head[8] & !COUNTDOWN_FOLLOWS {
        0 => SessionState::Lobby,
        1 => SessionState::Countdown,
        2 => SessionState::Racing,
        3 => SessionState::Finished,
        other => {
            return Err(ProtocolError::Malformed(format!(
                "telemetry session state {other}"
            )));
        }
    };
    let countdown_ms = if head[8] & COUNTDOWN_FOLLOWS != 0 {
        let (ms, r) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| short("countdown"))?;
        rest = r;
        Some(u16::from_le_bytes(*ms))
    } else {
        None
    };
    let ([session_cars, count], records) = rest
        .split_first_chunk::<2>()
        .map(|(c, r)| (*c, r))
        .ok_or_else(|| short("car counts"))?;
    let want = usize::from(count) * CAR_TELEMETRY_BYTES;
    if records.len() < want {
        return Err(short("cars"));
    }
    if records.len() > want {
        return Err(ProtocolError::Trailing(records.len() - want));
    }
    if count > session_cars {
        return Err(ProtocolError::Malformed(format!(
            "telemetry carries {count} cars of a {session_cars}-car session"
        )));
    }
    let (chunks, _) = records.as_chunks::<CAR_TELEMETRY_BYTES>();
    Ok(Telemetry {
        server_tick: word(0),
        input_ack: word(4),
        session_state,
        countdown_ms,
        session_cars,
        cars: chunks.iter().map(CarTelemetry::read).collect(),
    })
}

/// Bytes of a telemetry datagram's header without a countdown (two more with one).
pub const TELEMETRY_HEADER_BYTES: usize = 1 + 4 + 4 + 1 + 1 + 1;

/// Bytes of a telemetry datagram carrying `cars` cars, outside the countdown (two more in it).
pub const fn telemetry_datagram_len(cars: usize) -> usize {
    TELEMETRY_HEADER_BYTES + cars * CAR_TELEMETRY_BYTES
}

/// Bytes of one [`CarTelemetry`] on the wire.
pub const CAR_TELEMETRY_BYTES: usize = 1 + 3 + 3 + 2 + 2 + 1 + 1 + 1 + 2 + 3 + 1 + 1;

/// Each car's newest state from telemetry datagrams that carry some of a session's cars: what a
/// client drives and draws from.
#[derive(Debug, Clone, Default)]
pub struct FieldState {
    cars: Vec<Option<(u32, CarTelemetry)>>,
    session_cars: u8,
}

impl FieldState {
    /// Takes in a datagram's cars (a car is replaced only by a newer tick's state).
    pub fn update(&mut self, telemetry: &Telemetry) {
        self.session_cars = telemetry.session_cars;
        for car in &telemetry.cars {
            let i = usize::from(car.index);
            if self.cars.len() <= i {
                self.cars.resize(i + 1, None);
            }
            let slot = &mut self.cars[i];
            if slot.is_none_or(|(tick, _)| tick <= telemetry.server_tick) {
                *slot = Some((telemetry.server_tick, *car));
            }
        }
    }

    /// The newest state of car `index`, with its tick.
    pub fn car(&self, index: u8) -> Option<(u32, &CarTelemetry)> {
        self.cars
            .get(usize::from(index))?
            .as_ref()
            .map(|(tick, car)| (*tick, car))
    }

    /// Every car heard of, by index.
    pub fn cars(&self) -> impl Iterator<Item = &CarTelemetry> {
        self.cars.iter().flatten().map(|(_, car)| car)
    }

    /// Cars in the session, from the newest datagram.
    pub fn session_cars(&self) -> u8 {
        self.session_cars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn car(i: u8) -> CarTelemetry {
        CarTelemetry::quantize(
            i,
            -1234.567,
            89.01,
            -2.5,
            71.3,
            [1.0, 0.25, -0.5],
            3,
            4567.89,
            Some(2),
            FLAG_COLLIDING,
        )
    }

    #[test]
    fn a_full_session_fits_one_datagram_and_its_size_is_known() {
        let t = Telemetry {
            server_tick: 123_456,
            input_ack: 99,
            session_state: SessionState::Racing,
            countdown_ms: None,
            session_cars: 16,
            cars: (0..16).map(car).collect(),
        };
        let bytes = encode_telemetry(&t).expect("fits");
        assert_eq!(bytes.len(), telemetry_datagram_len(16));
        assert_eq!(bytes.len(), 12 + 16 * 21);
        assert_eq!(decode_telemetry(&bytes).expect("decodes"), t);
        // The countdown adds its two bytes.
        let counting = Telemetry {
            session_state: SessionState::Countdown,
            countdown_ms: Some(4000),
            ..t
        };
        let bytes = encode_telemetry(&counting).expect("fits");
        assert_eq!(bytes.len(), telemetry_datagram_len(16) + 2);
        assert_eq!(decode_telemetry(&bytes).expect("decodes"), counting);
    }

    #[test]
    fn quantized_fields_come_back_within_their_step() {
        let c = car(0);
        assert!((c.x_m() + 1234.567).abs() <= 0.005);
        assert!((c.y_m() - 89.01).abs() <= 0.005);
        assert!((c.yaw_rad() + 2.5).abs() < 1e-3);
        assert!((c.speed_mps() - 71.3).abs() <= 0.005);
        assert!((c.progress_m() - 4567.89).abs() <= 0.01);
        assert_eq!((c.throttle, c.brake, c.steering), (255, 64, -64));
        let nan =
            CarTelemetry::quantize(0, f32::NAN, 0.0, f32::NAN, -5.0, [2.0; 3], 0, -1.0, None, 0);
        assert_eq!(
            (nan.x_cm, nan.speed_cmps, nan.progress_cm, nan.throttle),
            (0, 0, 0, 255)
        );
    }

    #[test]
    fn positions_past_the_wire_range_saturate() {
        let far = CarTelemetry::quantize(3, 1e6, -1e6, 0.0, 0.0, [0.0; 3], 0, 1e7, None, 0);
        assert_eq!(
            (far.x_cm, far.y_cm, far.progress_cm),
            (POSITION_LIMIT_CM, -POSITION_LIMIT_CM, PROGRESS_LIMIT_CM)
        );
        // Set by hand past the range, a value is clamped on the wire, not wrapped.
        let t = Telemetry {
            server_tick: 1,
            input_ack: 0,
            session_state: SessionState::Racing,
            countdown_ms: None,
            session_cars: 1,
            cars: vec![CarTelemetry {
                x_cm: i32::MIN,
                y_cm: -5,
                ..far
            }],
        };
        let back = decode_telemetry(&encode_telemetry(&t).expect("fits")).expect("decodes");
        assert_eq!(
            (back.cars[0].x_cm, back.cars[0].y_cm),
            (-POSITION_LIMIT_CM, -5)
        );
    }

    #[test]
    fn bad_telemetry_is_named() {
        let t = Telemetry {
            server_tick: 7,
            input_ack: 0,
            session_state: SessionState::Countdown,
            countdown_ms: Some(4000),
            session_cars: 2,
            cars: vec![car(0), car(1)],
        };
        let bytes = encode_telemetry(&t).expect("fits");
        let err = |b: &[u8]| decode_telemetry(b).expect_err("refused").to_string();
        assert!(err(&bytes[..bytes.len() - 1]).contains("before its cars"));
        assert!(err(&bytes[..5]).contains("before its header"));
        let mut state = bytes.clone();
        state[9] = 0x85;
        assert!(err(&state).contains("session state 5"));
        let mut more = bytes.clone();
        more[12] = 1;
        assert!(err(&more).contains("2 cars of a 1-car session"));
        let mut long = bytes;
        long.push(0);
        assert!(matches!(
            decode_telemetry(&long),
            Err(ProtocolError::Trailing(1))
        ));
    }

    #[test]
    fn the_field_keeps_each_cars_newest_state() {
        let datagram = |tick: u32, cars: Vec<CarTelemetry>| Telemetry {
            server_tick: tick,
            input_ack: 0,
            session_state: SessionState::Racing,
            countdown_ms: None,
            session_cars: 3,
            cars,
        };
        let mut field = FieldState::default();
        field.update(&datagram(10, vec![car(0), car(1), car(2)]));
        let moved = CarTelemetry { x_cm: 1, ..car(0) };
        field.update(&datagram(11, vec![moved]));
        // A late datagram does not take a car back.
        field.update(&datagram(9, vec![car(0), car(2)]));
        assert_eq!(field.car(0), Some((11, &moved)));
        assert_eq!(field.car(2).map(|(tick, _)| tick), Some(10));
        assert_eq!(field.cars().count(), 3);
        assert_eq!(field.session_cars(), 3);
        assert_eq!(field.car(7), None);
    }
}

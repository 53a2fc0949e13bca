// ApexSim's wire protocol for browsers: the frames and datagrams of src/net/protocol.rs, read
// and written the way bincode 2 does (standard configuration: little-endian, variable-length
// integers for control frames, fixed-size ones for the input datagram; telemetry has a packed
// layout of its own). Messages have the shape serde
// gives them in JSON: `{"Variant": {fields}}`, or `"Variant"` for one without fields; ids are
// UUID strings. tests/fixtures/protocol_golden.json holds bytes the Rust encoder wrote and
// the values they carry; a test holds this file to them in Chromium, another holds Rust to them.
"use strict";

export const PROTOCOL_VERSION = 3;
export const ALPN = "apexsim/1";
export const KIND_INPUT = 1;
export const KIND_TELEMETRY = 2;
export const MAX_FRAME_BYTES = 256 * 1024;

export class DecodeError extends Error {}

class Reader {
  constructor(bytes, fixint) {
    this.b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    this.v = new DataView(this.b.buffer, this.b.byteOffset, this.b.byteLength);
    this.at = 0;
    this.fixint = fixint;
  }
  need(n) {
    if (this.at + n > this.b.length) throw new DecodeError(`needs ${n} bytes at ${this.at} of ${this.b.length}`);
    const at = this.at;
    this.at += n;
    return at;
  }
  done() {
    if (this.at !== this.b.length) throw new DecodeError(`${this.b.length - this.at} bytes left over`);
  }
  u8() { return this.v.getUint8(this.need(1)); }
  i8() { return this.v.getInt8(this.need(1)); }
  bool() {
    const x = this.u8();
    if (x > 1) throw new DecodeError(`bool ${x}`);
    return x === 1;
  }
  // Unsigned: bincode's varint (< 251 in one byte; 251, 252, 253 announce u16, u32, u64).
  uint(bytes) {
    if (this.fixint || bytes === 1) return this.fixed(bytes);
    const tag = this.u8();
    if (tag < 251) return tag;
    const width = { 251: 2, 252: 4, 253: 8 }[tag];
    if (!width || width > bytes) throw new DecodeError(`integer tag ${tag} for ${bytes} bytes`);
    return this.fixed(width);
  }
  fixed(bytes) {
    switch (bytes) {
      case 1: return this.v.getUint8(this.need(1));
      case 2: return this.v.getUint16(this.need(2), true);
      case 4: return this.v.getUint32(this.need(4), true);
      case 8: {
        const x = this.v.getBigUint64(this.need(8), true);
        if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw new DecodeError(`integer ${x} too large`);
        return Number(x);
      }
    }
    throw new DecodeError(`width ${bytes}`);
  }
  // Signed: zigzag in varint form, two's complement when fixed.
  int(bytes) {
    if (this.fixint) {
      switch (bytes) {
        case 1: return this.v.getInt8(this.need(1));
        case 2: return this.v.getInt16(this.need(2), true);
        case 4: return this.v.getInt32(this.need(4), true);
        case 8: return Number(this.v.getBigInt64(this.need(8), true));
      }
    }
    if (bytes === 1) return this.i8();
    const z = this.uint(bytes);
    return z % 2 === 0 ? z / 2 : -(z + 1) / 2;
  }
  f32() { return this.v.getFloat32(this.need(4), true); }
  f64() { return this.v.getFloat64(this.need(8), true); }
  len() {
    const n = this.uint(8);
    if (n > this.b.length - this.at) throw new DecodeError(`length ${n} past the end`);
    return n;
  }
  str() {
    const n = this.len();
    const at = this.need(n);
    return new TextDecoder("utf-8", { fatal: true }).decode(this.b.subarray(at, at + n));
  }
  uuid() {
    const n = this.len();
    if (n !== 16) throw new DecodeError(`uuid of ${n} bytes`);
    const at = this.need(16);
    const h = [...this.b.subarray(at, at + 16)].map(x => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
  option(f) { return this.bool() ? f() : null; }
  vec(f) {
    const n = this.len();
    const out = [];
    for (let i = 0; i < n; i++) out.push(f());
    return out;
  }
  variant(names) {
    const k = this.uint(4);
    if (k >= names.length) throw new DecodeError(`variant ${k} of ${names.length}`);
    return names[k];
  }
}

class Writer {
  constructor(fixint) { this.out = []; this.fixint = fixint; }
  u8(x) { this.out.push(x & 0xff); }
  fixed(x, bytes) {
    const b = new DataView(new ArrayBuffer(bytes));
    if (bytes === 1) b.setUint8(0, x); else if (bytes === 2) b.setUint16(0, x, true);
    else if (bytes === 4) b.setUint32(0, x, true); else b.setBigUint64(0, BigInt(x), true);
    this.out.push(...new Uint8Array(b.buffer));
  }
  uint(x, bytes) {
    if (!Number.isInteger(x) || x < 0) throw new RangeError(`not an unsigned integer: ${x}`);
    if (this.fixint || bytes === 1) return this.fixed(x, bytes);
    if (x < 251) return this.u8(x);
    if (x <= 0xffff) { this.u8(251); return this.fixed(x, 2); }
    if (x <= 0xffffffff) { this.u8(252); return this.fixed(x, 4); }
    this.u8(253); this.fixed(x, 8);
  }
  f32(x) { const b = new DataView(new ArrayBuffer(4)); b.setFloat32(0, x, true); this.out.push(...new Uint8Array(b.buffer)); }
  str(s) { const b = new TextEncoder().encode(s); this.uint(b.length, 8); this.out.push(...b); }
  uuid(s) {
    const h = s.replace(/-/g, "");
    if (!/^[0-9a-fA-F]{32}$/.test(h)) throw new RangeError(`not a uuid: ${s}`);
    this.uint(16, 8);
    for (let i = 0; i < 32; i += 2) this.u8(parseInt(h.slice(i, i + 2), 16));
  }
  option(x, f) { if (x === null || x === undefined) this.u8(0); else { this.u8(1); f(x); } }
  variant(k) { this.uint(k, 4); }
  bytes() { return new Uint8Array(this.out); }
}

const SESSION_STATES = ["Lobby", "Countdown", "Racing", "Finished"];
const START_MODES = ["manual", "countdown", "scheduled"];
const SERVER_MESSAGES = ["AuthSuccess", "AuthFailure", "HeartbeatAck", "LobbyState", "SessionJoined",
  "SessionLeft", "SessionStarting", "SessionResults", "Error", "PlayerDisconnected", "Announcement"];
const CLIENT_MESSAGES = ["Authenticate", "Heartbeat", "SelectCar", "CreateSession", "CreateFromTemplate",
  "JoinSession", "LeaveSession", "StartSession", "Disconnect", "InjectFault"];
const FAULT_KINDS = ["Panic", "NonFinite"];

function serverMessage(r) {
  const kind = r.variant(SERVER_MESSAGES);
  const u8 = () => r.uint(1), u16 = () => r.uint(2), u32 = () => r.uint(4);
  const summary = () => ({ id: r.uuid(), slug: r.str(), name: r.str() });
  switch (kind) {
    case "AuthSuccess": return { AuthSuccess: { player_id: r.uuid(), server_version: u32(), protocol_version: u32() } };
    case "AuthFailure": return { AuthFailure: { reason: r.str() } };
    case "HeartbeatAck": return { HeartbeatAck: { server_tick: u32() } };
    case "LobbyState": return { LobbyState: {
      players_in_lobby: r.vec(() => ({ id: r.uuid(), name: r.str(), selected_car: r.option(() => r.uuid()),
                                       in_session: r.option(() => r.uuid()) })),
      available_sessions: r.vec(() => ({ id: r.uuid(), track_name: r.str(), host_name: r.str(),
        player_count: u8(), max_players: u8(), ai_count: u8(), lap_limit: u8(), state: r.variant(SESSION_STATES),
        template_id: r.option(() => r.uuid()), template_name: r.option(() => r.str()), rotation: r.bool(),
        start_mode: r.variant(START_MODES), starts_at_unix_s: r.option(() => r.int(8)),
        allowed_cars: r.vec(() => r.uuid()) })),
      car_configs: r.vec(summary),
      track_configs: r.vec(summary),
      templates: r.vec(() => ({ id: r.uuid(), name: r.str(), track_id: r.uuid(), active: r.bool(),
        start_mode: r.variant(START_MODES), max_players: u8(), lap_limit: u8(),
        lap_limit_range: [u8(), u8()], ai_count_range: [u8(), u8()], allowed_cars: r.vec(() => r.uuid()) })),
    } };
    case "SessionJoined": return { SessionJoined: {
      session_id: r.uuid(), your_grid_position: u8(),
      track: { id: r.uuid(), name: r.str(), width_m: r.f32(), centerline: r.vec(() => [r.f32(), r.f32()]) },
      car: { id: r.uuid(), name: r.str(), physics: Array.from({ length: 10 }, () => r.f32()) },
    } };
    case "SessionLeft": return "SessionLeft";
    case "SessionStarting": return { SessionStarting: { countdown_seconds: u8(),
      grid: r.vec(() => ({ car_index: u8(), name: r.str(), player_id: r.option(() => r.uuid()) })) } };
    case "SessionResults": return { SessionResults: { session_id: r.uuid(), fault: r.option(() => r.str()),
      ended_by: r.option(() => r.str()),
      standings: r.vec(() => ({ position: u8(), car_index: u8(), name: r.str(), laps: u16(),
        total_time_s: r.option(() => r.f64()), best_lap_s: r.option(() => r.f64()) })) } };
    case "Error": return { Error: { code: u16(), message: r.str() } };
    case "PlayerDisconnected": return { PlayerDisconnected: { player_id: r.uuid() } };
    case "Announcement": return { Announcement: { session_id: r.option(() => r.uuid()), message: r.str() } };
  }
  throw new DecodeError(kind);
}

/// A control frame's payload (after its 4-byte length) as a server message.
export function decodeServerMessage(payload) {
  if (payload.length > MAX_FRAME_BYTES) throw new DecodeError(`frame of ${payload.length} bytes`);
  const r = new Reader(payload, false);
  const m = serverMessage(r);
  r.done();
  return m;
}

/// Splits complete frames off `buffer` (a Uint8Array of what the stream delivered so far):
/// returns the payloads and what is left for later.
export function splitFrames(buffer) {
  const frames = [];
  let at = 0;
  while (buffer.length - at >= 4) {
    const len = new DataView(buffer.buffer, buffer.byteOffset + at, 4).getUint32(0, true);
    if (len > MAX_FRAME_BYTES) throw new DecodeError(`frame of ${len} bytes`);
    if (buffer.length - at - 4 < len) break;
    frames.push(buffer.subarray(at + 4, at + 4 + len));
    at += 4 + len;
  }
  return { frames, rest: buffer.subarray(at) };
}

/// A client message as a control frame (4-byte length, then the message).
export function encodeClientMessage(msg) {
  const w = new Writer(false);
  const [kind, body] = typeof msg === "string" ? [msg, {}] : Object.entries(msg)[0];
  const k = CLIENT_MESSAGES.indexOf(kind);
  if (k < 0) throw new RangeError(`no client message ${kind}`);
  w.variant(k);
  const opt = (x, f) => w.option(x, f);
  switch (kind) {
    case "Authenticate": w.uint(body.protocol_version, 4); w.str(body.token); w.str(body.player_name); break;
    case "Heartbeat": w.uint(body.client_tick, 4); break;
    case "SelectCar": w.uuid(body.car_config_id); break;
    case "CreateSession": w.uuid(body.track_config_id); w.uint(body.max_players, 1); w.uint(body.ai_count, 1); w.uint(body.lap_limit, 1); break;
    case "CreateFromTemplate": w.uuid(body.template_id); opt(body.lap_limit, x => w.uint(x, 1)); opt(body.ai_count, x => w.uint(x, 1)); break;
    case "JoinSession": w.uuid(body.session_id); break;
    case "InjectFault": w.variant(FAULT_KINDS.indexOf(body.kind)); break;
  }
  const payload = w.bytes();
  const frame = new Uint8Array(4 + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length, true);
  frame.set(payload, 4);
  return frame;
}

/// Bytes of one car in a telemetry datagram.
export const CAR_TELEMETRY_BYTES = 21;
const SESSION_STATE_BITS = 0x03, COUNTDOWN_FOLLOWS = 0x80;

/// A telemetry datagram (kind 2), or a DecodeError. Its own packed layout (not bincode): the
/// tick and the acknowledged input (u32), a byte with the session state in its low two bits and
/// bit 7 set when a countdown (u16) follows, the session's car count and the count of cars that
/// follow, then each car in 21 bytes with x, y and progress in 24 bits.
export function decodeTelemetry(bytes) {
  const r = new Reader(bytes, true);
  if (r.u8() !== KIND_TELEMETRY) throw new DecodeError("not a telemetry datagram");
  const server_tick = r.uint(4), input_ack = r.uint(4), state = r.u8();
  if (state & ~(SESSION_STATE_BITS | COUNTDOWN_FOLLOWS)) throw new DecodeError(`telemetry session state ${state & ~COUNTDOWN_FOLLOWS}`);
  const countdown_ms = state & COUNTDOWN_FOLLOWS ? r.uint(2) : null;
  const session_cars = r.u8(), count = r.u8();
  if (count > session_cars) throw new DecodeError(`telemetry carries ${count} cars of a ${session_cars}-car session`);
  const i24 = () => { const at = r.need(3); return (r.v.getUint16(at, true) | (r.v.getInt8(at + 2) << 16)); };
  const u24 = () => { const at = r.need(3); return r.v.getUint16(at, true) + r.v.getUint8(at + 2) * 65536; };
  const cars = [];
  for (let i = 0; i < count; i++) {
    cars.push({ index: r.u8(), x_cm: i24(), y_cm: i24(), yaw: r.uint(2), speed_cmps: r.uint(2),
      throttle: r.u8(), brake: r.u8(), steering: r.i8(), lap: r.uint(2), progress_cm: u24(),
      finish_position: r.u8(), flags: r.u8() });
  }
  r.done();
  return { server_tick, input_ack, session_state: SESSION_STATES[state & SESSION_STATE_BITS], countdown_ms, session_cars, cars };
}

/// Each car's newest state from telemetry datagrams that carry some of a session's cars (the
/// server sends far cars at a lower rate), as src/net/protocol.rs's FieldState keeps it.
export class FieldState {
  constructor() { this.cars = new Map(); this.session_cars = 0; }
  /// Takes in a datagram's cars; a car is replaced only by a newer tick's state, which it
  /// carries as `tick`.
  update(t) {
    this.session_cars = t.session_cars;
    for (const c of t.cars) {
      const had = this.cars.get(c.index);
      if (!had || had.tick <= t.server_tick) this.cars.set(c.index, { ...c, tick: t.server_tick });
    }
  }
  /// Every car heard of, by index.
  list() { return [...this.cars.values()].sort((a, b) => a.index - b.index); }
}

/// A player input datagram (kind 1).
export function encodeInput(input) {
  const w = new Writer(true);
  w.u8(KIND_INPUT);
  w.uint(input.seq, 4); w.uint(input.server_tick_ack, 4);
  w.f32(input.throttle); w.f32(input.brake); w.f32(input.steering);
  return w.bytes();
}

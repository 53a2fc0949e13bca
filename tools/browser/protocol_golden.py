"""Holds the browsers' protocol codec (/protocol.js of a running server) to the golden bytes
the Rust encoder wrote (tests/fixtures/protocol_golden.json): every server message and
telemetry datagram decodes to its value, every client message and input encodes to its bytes.
   protocol_golden.py SERVER_URL GOLDEN_JSON
Prints {"checked": N, "failures": [...]} as JSON."""

import json
import sys

from common import page

url, golden = sys.argv[1], sys.argv[2]
cases = json.load(open(golden))

CHECK = """async (cases) => {
    const p = await import("/protocol.js");
    const unhex = h => new Uint8Array(h.match(/../g).map(x => parseInt(x, 16)));
    const hex = b => [...b].map(x => x.toString(16).padStart(2, "0")).join("");
    // Numbers are compared as the f32 or f64 they are on the wire.
    const same = (a, b) => {
        if (typeof a === "number" && typeof b === "number")
            return a === b || Math.fround(a) === Math.fround(b);
        if (Array.isArray(a) && Array.isArray(b))
            return a.length === b.length && a.every((x, i) => same(x, b[i]));
        if (a && b && typeof a === "object" && typeof b === "object") {
            const ka = Object.keys(a).sort(), kb = Object.keys(b).sort();
            return same(ka, kb) && ka.every(k => same(a[k], b[k]));
        }
        return a === b;
    };
    const failures = [];
    for (const c of cases) {
        try {
            if (c.kind === "server") {
                const got = p.decodeServerMessage(unhex(c.hex));
                if (!same(got, c.value)) failures.push({ name: c.name, got, want: c.value });
            } else if (c.kind === "telemetry") {
                const got = p.decodeTelemetry(unhex(c.hex));
                if (!same(got, c.value)) failures.push({ name: c.name, got, want: c.value });
            } else if (c.kind === "client") {
                const got = hex(p.encodeClientMessage(c.value));
                if (got !== c.hex) failures.push({ name: c.name, got, want: c.hex });
            } else {
                const got = hex(p.encodeInput(c.value));
                if (got !== c.hex) failures.push({ name: c.name, got, want: c.hex });
            }
        } catch (e) {
            failures.push({ name: c.name, error: String(e) });
        }
    }
    // A truncated or padded frame is refused, never misread.
    const one = cases.find(c => c.name === "lobby_state");
    for (const bad of [one.hex.slice(0, -2), one.hex + "00"]) {
        try { p.decodeServerMessage(unhex(bad)); failures.push({ name: "bad frame accepted", hex: bad.length }); }
        catch (e) { if (!(e instanceof p.DecodeError)) failures.push({ name: "bad frame", error: String(e) }); }
    }
    return { checked: cases.length, failures };
}"""

with page() as p:
    p.goto(url)
    print(json.dumps(p.evaluate(CHECK, cases)))

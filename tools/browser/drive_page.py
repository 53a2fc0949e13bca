"""The browser client races: /drive connects over WebTransport, joins the first open session,
and is driven to the finish by scripted key presses (arrow keys, through the page's own
smoothing), steering for a point ahead on the centerline. During the race a second tab floods
the server with malformed datagrams and must be disconnected while the first races on.

    drive_page.py HTTP_ADDR SCREENSHOT [--name NAME] [--speed M_PER_S] [--no-flood]
                  [--port UDP_PORT] [--create LAPS,AI]

`--port` connects through another UDP port (a relay); `--create` makes a session on the Mini
Oval with that many laps and AI cars and starts it, instead of joining one.

Prints one JSON object: the results, the driver's laps, its input-to-telemetry latency, round
trip and loss, what happened to the flooding tab, and the screenshot's path.
"""

import argparse
import json
import math
import sys
import time

from common import page

STATE = "(() => { const s = apexsim.state(); delete s.session; delete s.lobby; return s; })()"


def wrap(a):
    return (a + math.pi) % (2 * math.pi) - math.pi


class Driver:
    """Pure pursuit on the centerline, turned into key presses."""

    def __init__(self, page, centerline, speed):
        self.page = page
        self.line = centerline
        self.speed = speed
        self.down = set()
        self.near = 0

    def key(self, name, on):
        if on and name not in self.down:
            self.page.keyboard.down(name)
            self.down.add(name)
        elif not on and name in self.down:
            self.page.keyboard.up(name)
            self.down.discard(name)

    def release(self):
        for k in list(self.down):
            self.key(k, False)

    def step(self, st):
        me = st["me"]
        n = len(self.line)
        # The nearest centerline point, searched around the last one (points are ~1 m apart).
        best, best_d = self.near, float("inf")
        for k in range(self.near - 30, self.near + 60):
            x, y = self.line[k % n]
            d = (x - me["x"]) ** 2 + (y - me["y"]) ** 2
            if d < best_d:
                best, best_d = k % n, d
        self.near = best
        ahead = int(8 + 0.6 * me["speed"])
        tx, ty = self.line[(best + ahead) % n]
        err = wrap(math.atan2(ty - me["y"], tx - me["x"]) - me["heading"])
        # Positive error: the point is to the left, and left is negative steering.
        target = max(-1.0, min(1.0, -2.5 * err))
        steering = st["input"]["steering"]
        self.key("ArrowRight", target > steering + 0.06)
        self.key("ArrowLeft", target < steering - 0.06)
        v = me["speed"]
        self.key("ArrowUp", v < self.speed - 0.5)
        self.key("ArrowDown", v > self.speed + 3.0)


def open_flooder(context, addr):
    """A second tab, connected and idle in the lobby."""
    tab = context.new_page()
    tab.goto(f"http://{addr}/drive?name=Flooder")
    tab.click("#connect-button")
    tab.wait_for_function("apexsim.state().player_id !== null", timeout=15000)
    return tab


FLOOD = """() => {
  window.flooded = (async () => {
    let sent = 0;
    for (let i = 0; i < 400 && apexsim.state().connected; i++) {
      const junk = new Uint8Array(8 + (i % 40));
      crypto.getRandomValues(junk);
      junk[0] = 0xee;
      await apexsim.datagram(junk).catch(() => {});
      sent++;
      if (i % 20 === 19) await new Promise(r => setTimeout(r, 10));
    }
    return sent;
  })();
}"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("screenshot")
    ap.add_argument("--name", default="Browser Driver")
    ap.add_argument("--speed", type=float, default=16.0)
    ap.add_argument("--no-flood", action="store_true")
    ap.add_argument("--timeout", type=float, default=240.0)
    ap.add_argument("--port", type=int)
    ap.add_argument("--create")
    args = ap.parse_args()
    out = {}
    with page() as p:
        errors = []
        p.on("pageerror", lambda e: errors.append(str(e)))
        port = f"&port={args.port}" if args.port else ""
        p.goto(f"http://{args.addr}/drive?name={args.name}{port}")
        p.click("#connect-button")
        p.wait_for_function("apexsim.state().player_id !== null", timeout=15000)
        if args.create:
            laps, ai = args.create.split(",")
            p.select_option("#create-track", label="Mini Oval")
            p.fill("#create-laps", laps)
            p.fill("#create-ai", ai)
            p.fill("#create-max", "4")
            p.click("#create-button")
            p.wait_for_function("apexsim.state().session !== null", timeout=15000)
            p.click("#start-button", timeout=15000)
        else:
            p.wait_for_selector("button.join", timeout=60000)
            p.click("button.join")
            p.wait_for_function("apexsim.state().session !== null", timeout=15000)
        centerline = p.evaluate("apexsim.state().session.centerline")
        driver = Driver(p, centerline, args.speed)
        flooder = None if args.no_flood else open_flooder(p.context, args.addr)
        p.bring_to_front()
        out["visibility"] = p.evaluate("document.visibilityState")
        deadline = time.time() + args.timeout
        flood_started = False
        states = set()
        while time.time() < deadline:
            st = p.evaluate(STATE)
            states.add(st["state"])
            if st["results"] is not None:
                break
            if st["closed"] is not None:
                out["closed"] = st["closed"]
                break
            if st["state"] == "Racing" and st["me"] is not None:
                if st["me"]["finish_position"]:
                    driver.release()
                else:
                    driver.step(st)
                # Flood from the other tab on the first lap, while this one races on.
                if flooder is not None and not flood_started and st["me"]["lap"] >= 1:
                    flood_started = True
                    flooder.evaluate(FLOOD)
                elif flooder is not None and flood_started:
                    fs = flooder.evaluate(STATE)
                    if fs["closed"] is not None:
                        out["flood"] = {
                            "sent": flooder.evaluate("window.flooded"),
                            "closed": fs["closed"],
                            "driver_connected": st["connected"],
                            "driver_tick": st["tick"],
                        }
                        flooder.close()
                        flooder = None
            time.sleep(0.02)
        driver.release()
        # A page opened now connects with the certificate in use now (rotated, in the test).
        late = p.context.new_page()
        late.goto(f"http://{args.addr}/drive?name=Latecomer")
        late.click("#connect-button")
        late.wait_for_function("apexsim.state().player_id !== null || apexsim.state().message !== ''", timeout=15000)
        out["late_connect"] = late.evaluate("apexsim.state().player_id !== null")
        out["late_message"] = late.evaluate("apexsim.state().message")
        late.close()
        p.bring_to_front()
        p.wait_for_timeout(500)
        st = p.evaluate(STATE)
        p.screenshot(path=args.screenshot, full_page=True)
        out.update(
            {
                "screenshot": args.screenshot,
                "states": sorted(s for s in states if s),
                "results": st["results"],
                "my_index": st["my_index"],
                "laps": st["laps"],
                "best": st["best"],
                "latency": st["latency"],
                "rtt_ms": st["rtt_ms"],
                "loss": st["loss"],
                "received": st["received"],
                "ignored": st["ignored"],
                "inputs_sent": st["inputs_sent"],
                "connected": st["connected"],
                "page_errors": errors,
            }
        )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

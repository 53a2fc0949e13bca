"""The browser client's controls without a server connection: keys are smoothed (a key held
for a fifth of a second moves the steering by the ramp, not to full lock) and a gamepad's
analog stick and triggers are read as they are (a fake pad in place of the Gamepad API).

    controls_page.py DRIVE_URL

Prints JSON: the inputs after holding keys, after releasing them, and with the gamepad.
"""

import json
import sys

from common import page

PAD = """
let padOn = false;
window.setPad = on => { padOn = on; };
navigator.getGamepads = () => padOn ? [{ connected: true, axes: [-0.5, 0],
  buttons: Array.from({ length: 8 }, (_, i) => ({ value: i === 7 ? 0.8 : i === 6 ? 0.1 : 0 })) }] : [];
"""


def main():
    url = sys.argv[1]
    out = {}
    with page() as p:
        errors = []
        p.on("pageerror", lambda e: errors.append(str(e)))
        p.add_init_script(PAD)
        p.goto(url)
        p.click("body")
        p.evaluate("window.heldSince = performance.now()")
        p.keyboard.down("ArrowRight")
        p.keyboard.down("ArrowUp")
        p.wait_for_timeout(200)
        # How long the keys were really held (a loaded machine stretches the 200 ms).
        out["held_200ms"] = p.evaluate(
            "({ ...apexsim.state().input, held_s: (performance.now() - window.heldSince) / 1000 })")
        p.wait_for_timeout(400)
        out["held_600ms"] = p.evaluate("apexsim.state().input")
        p.keyboard.up("ArrowRight")
        p.keyboard.up("ArrowUp")
        p.wait_for_timeout(400)
        out["released"] = p.evaluate("apexsim.state().input")
        p.evaluate("setPad(true)")
        p.wait_for_timeout(100)
        out["gamepad"] = p.evaluate("apexsim.state().input")
        out["errors"] = errors
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

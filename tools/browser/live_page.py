"""Watches the live timing page during a race and reports what it shows, as JSON on stdout:
   live_page.py URL SCREENSHOT CARS

Waits until a session shows CARS rows, then samples the table twice two seconds apart (the
positions and laps a viewer reads) and checks the map: every car of the newest view is drawn,
in its colour, where its position projects on the track. Saves a screenshot."""

import json
import sys
import time

from common import page

url, screenshot, cars = sys.argv[1], sys.argv[2], int(sys.argv[3])


def table(p):
    return p.eval_on_selector_all(
        "section.session tbody tr",
        """rows => rows.map(r => ({
            position: Number(r.cells[0].textContent),
            driver: r.cells[1].textContent.replace("★", "").trim(),
            lap: r.cells[3].textContent,
            sectors: r.cells[9].textContent.trim(),
            index: Number(r.dataset.index),
        }))""",
    )


with page() as p:
    errors = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(url)
    p.wait_for_function(
        f"document.querySelectorAll('section.session tbody tr').length >= {cars}", timeout=60_000
    )
    p.wait_for_function("window.apexsim && window.apexsim.drawn().length > 0", timeout=30_000)
    # Racing, a few seconds after the green light.
    p.wait_for_function(
        "(() => { const s = window.apexsim.view()?.sessions?.[0];"
        " return s && s.phase.state === 'racing' && s.phase.race_s > 3; })()",
        timeout=60_000,
    )
    first = table(p)
    phase_first = p.text_content("section.session .phase")
    time.sleep(2.5)
    second = table(p)
    phase_second = p.text_content("section.session .phase")
    # The map: each car drawn at the projection of its newest position, in its colour.
    check = p.evaluate(
        """() => {
            const drawn = window.apexsim.drawn();
            const canvas = document.querySelector("section.session canvas");
            const ctx = canvas.getContext("2d");
            return drawn.map(d => {
                const px = ctx.getImageData(Math.round(d.px), Math.round(d.py), 1, 1).data;
                return { index: d.index, offset: Math.hypot(d.px - d.tx, d.py - d.ty),
                         colour: d.colour, pixel: [px[0], px[1], px[2]] };
            });
        }"""
    )
    p.screenshot(path=screenshot, full_page=True)
    print(json.dumps({
        "first": first,
        "second": second,
        "phase": [phase_first, phase_second],
        "map": check,
        "errors": errors,
    }))

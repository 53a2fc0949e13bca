"""Opens a session's results page and reports what it shows, as JSON on stdout:
   results_page.py URL SCREENSHOT"""

import json
import sys

from common import page

url, screenshot = sys.argv[1], sys.argv[2]

with page() as p:
    errors = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(url)
    p.wait_for_function("document.querySelectorAll('#classification tr').length > 1", timeout=30_000)
    rows = p.eval_on_selector_all(
        "#classification tr",
        "rows => rows.slice(1).map(r => [...r.cells].map(c => c.textContent.trim()))",
    )
    lines = p.eval_on_selector_all("#chart polyline", "ls => ls.length")
    fastest = p.eval_on_selector_all("#fastest tr", "rs => rs.length - 1")
    p.screenshot(path=screenshot, full_page=True)
    print(json.dumps({"classification": rows, "chart_lines": lines, "fastest": fastest, "errors": errors}))

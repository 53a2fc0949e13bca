#!/usr/bin/env python3
"""Prints the module graph of the library crates and fails on an import cycle or a broken layer.

For each crate (`src/` of `apexsim`, `systems/src/` of `apexsim-systems`) a node is a top-level
module (`archive` is `src/archive.rs` and everything under `src/archive/`), plus `lib` for what
the crate root itself defines. An edge A -> B is a path in A's code that names B: `crate::B`,
`super::B` from a top-level file, or `B::` in the root. Declaring a module (`mod b;`) or
re-exporting it from the root is not an edge; using it in the root's own code is.

Rules (exit 1 when one is broken, with what breaks it):
  - no cycle between modules of a crate (strongly connected components of more than one node);
  - the archive is the bottom layer: it names none of coach, analysis, events, net.

The binary (`src/main.rs`, `src/cmd/`) is another crate on top and is not part of the graph.

Usage: tools/module_graph.py [--quiet]
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = {"apexsim": ROOT / "src", "apexsim-systems": ROOT / "systems" / "src"}
BINARY = {"main.rs", "cmd.rs", "cmd"}
FORBIDDEN = {("apexsim", "archive"): {"coach", "analysis", "events", "net"}}


def drop_tests(code: str) -> str:
    """Code without its `#[cfg(test)] mod tests { ... }` blocks (braces matched)."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*mod \w+\s*\{", code)
        if not m:
            return code
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        code = code[: m.start()] + code[i:]


def strip(code: str) -> str:
    """Code without its unit tests, comments, doc comments and string or char literals."""
    code = drop_tests(code)
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.S)
    code = re.sub(r'r#*"(?:.|\n)*?"#*', '""', code)
    code = re.sub(r'"(?:\\.|[^"\\])*"', '""', code)
    code = re.sub(r"'(?:\\.|[^'\\])'", "' '", code)
    return "\n".join(line.split("//", 1)[0] for line in code.splitlines())


def modules(src: Path) -> dict:
    """Top-level module name -> its files."""
    out = {"lib": [src / "lib.rs"]}
    for f in sorted(src.glob("*.rs")):
        if f.name in ("lib.rs",) or f.name in BINARY:
            continue
        out[f.stem] = [f]
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        if d.name in BINARY:
            continue
        out.setdefault(d.name, []).extend(
            f for f in sorted(d.rglob("*.rs")) if f.name != "tests.rs"
        )
    return out


def uses(text: str, names: set) -> set:
    """Names of `names` this code refers to by `crate::name` paths, including grouped imports."""
    found = set()
    for m in re.finditer(r"\bcrate::(\{[^}]*\}|\w+)", text):
        part = m.group(1)
        items = re.findall(r"\w+", part) if part.startswith("{") else [part]
        # In a group only the first segment of each path matters.
        if part.startswith("{"):
            items = [p.strip().split("::")[0] for p in part[1:-1].split(",")]
        found.update(i for i in items if i)
    return found


def edges(src: Path) -> dict:
    mods = modules(src)
    names = set(mods) - {"lib"}
    graph = {m: set() for m in mods}
    for mod, files in mods.items():
        for f in files:
            text = strip(f.read_text(encoding="utf-8"))
            refs = uses(text, names)
            top_level = f.parent == src
            if top_level and mod != "lib":
                for m in re.finditer(r"\bsuper::(\{[^}]*\}|\w+)", text):
                    refs.add(m.group(1) if not m.group(1).startswith("{") else "lib")
            if mod == "lib":
                body = re.sub(r"^\s*(pub(\([^)]*\))?\s+)?(mod|use)\b[^;]*;", "", text, flags=re.M)
                body = re.sub(r"pub use [^;]*;", "", body, flags=re.S)
                refs.update(n for n in names if re.search(rf"(?<![\w:]){n}::", body))
            for r in refs:
                target = r if r in names else "lib"
                if target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    quiet = "--quiet" in sys.argv
    failures = []
    for crate, src in CRATES.items():
        graph = edges(src)
        if not quiet:
            print(f"{crate} ({src.relative_to(ROOT)}):")
            for mod in sorted(graph):
                deps = ", ".join(sorted(graph[mod])) or "-"
                print(f"  {mod:<12} -> {deps}")
        for comp in cycles(graph):
            inner = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
            failures.append(f"{crate}: import cycle among {', '.join(comp)} ({'; '.join(inner)})")
        for (c, mod), banned in FORBIDDEN.items():
            if c == crate and mod in graph:
                for b in sorted(graph[mod] & banned):
                    failures.append(f"{crate}: the {mod} layer imports {b}")
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    if not failures and not quiet:
        print("no import cycles; the archive imports nothing above it")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

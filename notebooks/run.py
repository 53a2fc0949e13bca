"""Executes notebooks headless against an archive: run.py ARCHIVE OUT NOTEBOOK...

Each notebook runs in a fresh kernel with APEXSIM_ARCHIVE set to the archive and
APEXSIM_NOTEBOOK_OUT to OUT (where figures go); the executed copy is saved to OUT. Exits 1 on
the first failing cell, naming the notebook.
"""

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    archive, out, notebooks = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    os.environ["APEXSIM_ARCHIVE"] = str(archive.resolve())
    os.environ["APEXSIM_NOTEBOOK_OUT"] = str(out.resolve())
    for path in map(Path, notebooks):
        nb = nbformat.read(path, as_version=4)
        started = time.monotonic()
        try:
            NotebookClient(nb, timeout=600, kernel_name="python3").execute()
        except CellExecutionError as e:
            print(f"{path}: a cell failed:\n{e}", file=sys.stderr)
            return 1
        finally:
            nbformat.write(nb, out / path.name)
        print(f"{path}: ok in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

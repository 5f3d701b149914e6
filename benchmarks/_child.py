"""The benchmarks' child-process runner: a measurement runs in a fresh Python (its own imports, peak RSS and
threads), optionally on another source tree, and reports one ``RESULT {json}`` line on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_child(script: str, args: list[str], src: str | None = None) -> dict:
    """Run ``python script *args`` (with ``PYTHONPATH`` = ``src`` when given) and return its RESULT line's JSON;
    raises with the tail of its stderr when it printed none."""
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())} if src else {**os.environ}
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{Path(script).name} {' '.join(args)} ({src or 'installed'}) failed:\n{proc.stderr[-3000:]}")

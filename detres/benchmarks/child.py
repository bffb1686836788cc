"""``python -m detres.benchmarks.child JOB ARG...``: one measurement of :mod:`detres.benchmarks.scale` in a fresh
interpreter (so that no other measurement's memory counts in it); prints its figures as one JSON line."""
from __future__ import annotations

import json
import sys

from detres.benchmarks.scale import JOBS

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in JOBS:
        sys.exit(f"usage: python -m detres.benchmarks.child {{{','.join(JOBS)}}} ARG...")
    print(json.dumps(JOBS[sys.argv[1]](*sys.argv[2:])))

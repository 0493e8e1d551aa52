"""`make bench`: run every benchmark and write docs/BENCHMARKS.md."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["tiny_latency.py", "decide.py", "lua_decide.py", "admissions.py", "submit.py",
           "worker_start.py", "scale_sim.py", "mtls.py", "transport_floor.py",
           "bare_chain.py", "gateway_overhead.py"]

for bench in BENCHES:
    subprocess.run([sys.executable, str(HERE / bench), "--write"], check=True)

"""Black-box audits of the sample model: verdicts, p-values, calls per image and calls per second.

Runs, each with an empty cache:
1. the published set through a loopback ``cdi-audit serve`` (a separate process, as a provider
   would run it), and the never-trained ``other`` set through the same server;
2. the published set with ``--access blackbox`` (the local back end, batched);
3. the command back end with a program that only copies its input, which measures the cost of
   starting one process per call (the floor for ``--endpoint-cmd``).

Threads: the server gets one torch thread and the client one, so the two processes never ask
for more than the machine's 2 cores.

    python benchmarks/blackbox_throughput.py [--out benchmarks/blackbox_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
COPY_PROGRAM = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def audit(suspect: str, cache: Path, *model: str) -> dict:
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "cdi_audit", "check", str(SAMPLE / suspect), "--reference",
         str(SAMPLE / "unpublished"), *model, "--cache-dir", str(cache), "--json", "--jobs", "1"],
        capture_output=True, text=True, env=ONE_THREAD, check=False,
    )
    wall = time.perf_counter() - started
    result = json.loads(completed.stdout)
    extraction = result["extraction"]
    images = result["n_suspect"] + result["n_reference"]
    return {
        "suspect": suspect, "exit_code": completed.returncode, "verdict": result["verdict"],
        "p_value": result["p_value"], "auc": result["effect"]["auc"], "images": images,
        "calls": extraction["model_calls"], "calls_per_image": extraction["model_calls"] / images,
        "extraction_seconds": round(extraction["seconds"], 2),
        "calls_per_second": round(extraction["model_calls"] / extraction["seconds"], 1),
        "wall_seconds": round(wall, 2),
    }


def wait_until_up(url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server at {url} did not come up")


def command_calls_per_second(calls: int = 50) -> float:
    import numpy as np

    from cdi_audit.blackbox.endpoints import CommandVariation
    from cdi_audit.blackbox.variation import VariationRequest

    backend = CommandVariation(f"{sys.executable} -c '{COPY_PROGRAM}' {{input}} {{output}}")
    image = np.zeros((32, 32, 3), np.uint8)
    started = time.perf_counter()
    for seed in range(calls):
        backend.vary(VariationRequest(image, 0.2, seed))
    return round(calls / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "blackbox_throughput.json")
    arguments = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as work:
        url = f"http://127.0.0.1:{free_port()}/"
        port = url.rsplit(":", 1)[1].strip("/")
        server = subprocess.Popen([sys.executable, "-m", "cdi_audit", "serve", str(SAMPLE / "model"), "--port", port,
                                   "--device", "cpu"], env=ONE_THREAD, stderr=subprocess.DEVNULL)
        try:
            wait_until_up(url)
            results["http_published"] = audit("published", Path(work) / "http", "--endpoint", url)
            results["http_other"] = audit("other", Path(work) / "http-other", "--endpoint", url)
        finally:
            server.terminate()
            server.wait()
        results["local_blackbox_published"] = audit("published", Path(work) / "local", "--model",
                                                    str(SAMPLE / "model"), "--access", "blackbox")
    results["command_copy_calls_per_second"] = command_calls_per_second()
    arguments.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

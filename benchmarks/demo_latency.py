# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""How long the browser demo takes to classify one image (issue 24: under a second on a 2-core CPU).

For the quickstart's run (``python recipes/quickstart.py`` first) and each torch thread count, the same test digits
of MNIST-5k are classified one at a time by the latest revision: through [`DemoRun.classify`] (model forward, softmax,
top-k), and through the app's ``/classify`` route with `gradio_client` over HTTP on 127.0.0.1 (upload, queue, JSON:
what the browser waits for). The model is loaded once before timing (its load is reported apart). Prints a table of
median, 90th percentile and worst latency, and the share of requests under a second, with the versions and the load
average (other processes share the CPU)::

    python benchmarks/demo_latency.py [--run runs/quickstart/nsp] [--repeats 30] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, facts_line, markdown_table, package_versions, run_facts, write_results


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def row(threads: int, path: str, seconds: list[float]) -> list[str]:
    milliseconds = [1000 * s for s in seconds]
    return [
        str(threads),
        path,
        f"{statistics.median(milliseconds):.0f}",
        f"{percentile(milliseconds, 0.9):.0f}",
        f"{max(milliseconds):.0f}",
        f"{100 * sum(s < 1 for s in seconds) / len(seconds):.0f} %",
    ]


def markdown(results: dict[str, Any]) -> str:
    """The latency table with the facts of its run."""
    rows = [row(r["threads"], r["path"], r["seconds"]) for r in results["rows"]]
    return "\n".join(
        [
            "## Browser demo: classifying one image (`results/demo-latency.json`)",
            "",
            facts_line(results["facts"]),
            f"Run: {results['run']} (latest {results['revision']}); {results['images']} images per row; first load and "
            f"classification {results['load_seconds']:.1f} s; {', '.join(f'{k} {v}' for k, v in results['versions'].items())}; "
            f"load average {results['load_average'][0]:.1f} at the start, {results['load_average'][1]:.1f} at the end.",
            "",
            markdown_table(["torch threads", "path", "median ms", "p90 ms", "worst ms", "under 1 s"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/quickstart/nsp", help="a run folder (default: the quickstart's)")
    parser.add_argument("--repeats", type=int, default=30, help="images classified per path and thread count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "demo-latency.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the loopback server helper of the tests
    from demo_browser import served
    from gradio_client import Client, handle_file

    from peft_nsp.demo import DemoRun, build_demo
    from peft_nsp.offline import load_mnist_5k

    images = list(load_mnist_5k(test_per_class=max(1, -(-args.repeats // 10)), seed=0)["test"]["image"])[
        : args.repeats
    ]
    load_start = os.getloadavg()
    start = time.perf_counter()
    run = DemoRun(args.run)
    run.classify(images[0])
    load_seconds = time.perf_counter() - start
    rows = []
    with tempfile.TemporaryDirectory() as folder, served(build_demo(run)) as url:
        files = []
        for i, image in enumerate(images):
            files.append(Path(folder) / f"{i}.png")
            image.save(files[-1])
        client = Client(url, verbose=False)
        for threads in args.threads:
            torch.set_num_threads(threads)
            run.classify(images[0])  # warm the thread pool
            direct, http = [], []
            for image, file in zip(images, files):
                begin = time.perf_counter()
                run.classify(image)
                direct.append(time.perf_counter() - begin)
                begin = time.perf_counter()
                client.predict(handle_file(str(file)), run.latest.name, 5, api_name="/classify")
                http.append(time.perf_counter() - begin)
            rows += [
                {"threads": threads, "path": "DemoRun.classify", "seconds": direct},
                {"threads": threads, "path": "/classify over HTTP", "seconds": http},
            ]
    results = {
        "facts": run_facts("cpu"),
        "run": args.run,
        "revision": run.latest.name,
        "images": len(images),
        "load_seconds": load_seconds,
        "versions": {**package_versions(), "gradio": version("gradio")},
        "load_average": [load_start[0], os.getloadavg()[0]],
        "rows": rows,
    }
    write_results(args.output, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()

"""Measure routing throughput, training step time and peak memory of a MiniLM router.

Writes a markdown report (default ``docs/benchmarks.md``) with the machine it ran on. The router
has one row per CMRBench model (2,127) and uses the packaged all-MiniLM-L6-v2, so the numbers
match what ``cmrkit route`` and ``cmrkit run`` do on the full label space. Prompts are real
CMRBench test prompts when a data folder is given, otherwise synthetic sentences of similar
length.

Usage::

    python benchmarks/speed_memory.py --data-dir ../shared/cmrbench --output docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from cmrkit.encoder import QueryEncoder
from cmrkit.router import Router

NUM_MODELS = 2127
ROUTE_BATCHES = (1, 16, 64)


def load_prompts(data_dir: Path | None, count: int) -> list[str]:
    """Real E1 and E4 test prompts from ``data_dir``, or synthetic prompts of similar length."""
    if data_dir is None:
        return [
            f"I need a model that can translate document number {i} from Spanish into English"
            for i in range(count)
        ]
    prompts: list[str] = []
    for name in ("apibench-hf", "hugging-bench-2"):
        path = data_dir / "data" / "processed" / f"cleaned-{name}-eval.json"
        with open(path, encoding="utf-8") as handle:
            prompts += [json.loads(line)["instruction"].removeprefix("###Instruction: ") for line in handle]
    return prompts[:count]


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def route_throughput(router: Router, prompts: list[str], batch_size: int, repeats: int = 3) -> float:
    """Median prompts per second of tokenise + encode + score over all rows + top-5."""
    router.eval()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(prompts), batch_size):
            batch = router.encoder.tokenize(prompts[start : start + batch_size])
            router(batch).topk(5, dim=1)
        rates.append(len(prompts) / (time.perf_counter() - started))
    return statistics.median(rates)


def train_step_seconds(router: Router, prompts: list[str], batch_size: int, steps: int = 5) -> float:
    """Median seconds of one full fine-tuning step (forward, softmax over all rows, backward, AdamW)."""
    router.train()
    optimizer = torch.optim.AdamW(router.parameters(), lr=1e-5)
    times = []
    for step in range(steps + 1):
        texts = prompts[step * batch_size : (step + 1) * batch_size]
        labels = torch.randint(0, NUM_MODELS, (len(texts),))
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(router(router.encoder.tokenize(texts)), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step > 0:  # the first step pays one-off allocation costs
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--prompts", type=int, default=256, help="Prompts per throughput measurement.")
    args = parser.parse_args()

    data_dir = args.data_dir or (
        Path(os.environ["CMRKIT_DATA_DIR"]) if "CMRKIT_DATA_DIR" in os.environ else None
    )
    prompts = load_prompts(data_dir, args.prompts)
    torch.manual_seed(0)
    router = Router(QueryEncoder("minilm", max_length=64), dim=256)
    router.head.add_labels(list(range(NUM_MODELS)))
    after_load = peak_rss_mib()

    rows = [
        (f"route, batch {size}", f"{route_throughput(router, prompts, size):.0f} prompts/s")
        for size in ROUTE_BATCHES
    ]
    step = train_step_seconds(router, prompts, batch_size=32)
    rows.append(("train step, batch 32, full fine-tuning", f"{step:.2f} s ({32 / step:.0f} prompts/s)"))
    rows.append(("peak memory after loading the router", f"{after_load:.0f} MiB"))
    rows.append(("peak memory after training steps", f"{peak_rss_mib():.0f} MiB"))

    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, 1-minute load average {os.getloadavg()[0]:.1f} at the start"
    )
    source = f"CMRBench test prompts from {data_dir}" if data_dir else "synthetic prompts"
    lines = [
        "# Speed and memory",
        "",
        "Measured by `python benchmarks/speed_memory.py` (`nox -s benchmarks`) on "
        f"{time.strftime('%Y-%m-%d')}:",
        f"{machine}; MiniLM-L6 router with {NUM_MODELS} model rows, max length 64 tokens, {source}.",
        "Throughput is the median of 3 passes over the prompts; step time is the median of 5 steps.",
        "",
        "| measurement | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

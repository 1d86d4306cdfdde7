"""Time-to-action in policy mode (ANS, k = 10) vs the synchronous sampler at N = 50, per preset.

    python benchmarks/bench_latency.py [--preset small] [--device cuda] [--dtype bf16]
"""

import sys

from xwam.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "latency", "--out", "benchmarks/results/latency.json", *sys.argv[1:]]))

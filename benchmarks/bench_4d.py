"""4D mode cost: depth branch only at the last call vs at every call vs video without depth.

    python benchmarks/bench_4d.py [--preset small] [--device cuda] [--dtype bf16]
"""

import sys

from xwam.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "4d", "--out", "benchmarks/results/4d.json", *sys.argv[1:]]))

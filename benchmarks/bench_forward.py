"""Our transformer forward vs diffusers' stock WanTransformer3DModel.forward on the same video tokens.

    python benchmarks/bench_forward.py [--preset small] [--device cuda] [--dtype bf16]
"""

import sys

from xwam.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "forward", "--out", "benchmarks/results/forward.json", *sys.argv[1:]]))

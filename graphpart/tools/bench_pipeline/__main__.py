"""`python -m graphpart.tools.bench_pipeline`: run the pipeline benchmark and print its report."""

import sys

from graphpart.tools.bench_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())

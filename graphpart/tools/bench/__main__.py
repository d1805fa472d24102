"""`python -m graphpart.tools.bench`: run the training-step benchmark and print its report."""

import sys

from graphpart.tools.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

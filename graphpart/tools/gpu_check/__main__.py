"""`python -m graphpart.tools.gpu_check`: what tools/gpu-check runs after installing."""

from graphpart.tools.gpu_check.cli import main

raise SystemExit(main())

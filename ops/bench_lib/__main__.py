"""``python -m bench_lib``: the harness entry (ops/bench runs this)."""

import sys

from bench_lib.cli import main

sys.exit(main())

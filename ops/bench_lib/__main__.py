"""``python -m ops.bench_lib``: the harness entry (ops/bench runs this)."""

import sys

from ops.bench_lib.cli import main

sys.exit(main())

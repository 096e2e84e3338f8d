"""Test-session defaults: notebooks run in smoke mode, figures render off-screen."""

import os

os.environ.setdefault("SMOKE_TEST", "1")  # nbval's kernels inherit this: notebooks shrink themselves
os.environ.setdefault("MPLBACKEND", "Agg")

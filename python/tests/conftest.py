"""Shared test setup: the reference files live in ../shared (CURVOPS_SHARED overrides)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import curvops  # noqa: F401
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover
    if os.environ.get("CURVOPS_REQUIRE_PYTHON"):
        raise
    import pytest

    pytest.skip(f"the Python package or torch is not installed ({e}); see README.md", allow_module_level=True)

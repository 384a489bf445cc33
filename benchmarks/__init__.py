"""fedguard's benchmarks and cross-checks: dev tools, never installed (setup.py maps only the
product folders). Each imports fedguard like any user; run them from the repository root,
``python -m benchmarks.<name>`` (Makefile targets ``bench-*``, ``crosscheck``, ``gpu-check``).
"""

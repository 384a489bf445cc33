"""Test harnesses: what the tests need to set up a federation, written for the tests.

Tests never borrow product demo or benchmark code as scaffolding (#20.6): the demo may
change what it writes without changing what the tests run.
"""

"""Simulate a GPU node in every process of a test run (see simulated_node.py); inert without its spec."""

try:
    import simulated_node

    simulated_node.install()
except Exception as exc:  # a broken simulation must not hide as a missing feature
    import sys

    print(f"simulated node: {exc!r}", file=sys.stderr)
    raise

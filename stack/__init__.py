"""Everything that is not product: the local stack, its stand-ins and synthetic data.

Used by ``make demo``, the tests and the benchmarks; never shipped in the wheel.
"""

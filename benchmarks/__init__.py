"""Benchmarks: the cost of exactly-once, side by side with the alternatives.

Run them with ``./dev bench`` (``python -m benchmarks``); ``--quick`` is a smoke
run with small sizes. Every figure is a ratio of two arms measured in the same
run, repetitions interleaved (the arms take turns, the order rotated each
repetition), reported as min / median / max over the repetitions next to the
absolute figures. Each benchmark starts its own private ``redis-server``.

Modules: ``harness`` (repetitions, statistics, result rows), ``environment``
(machine, versions, command line), ``report`` (JSON and docs/BENCHMARKS.md), and
one module per benchmark: ``worker_throughput``, ``claim_cost``, ``merge``,
``burst``, ``lateness`` (with ``apps``: the processes the last two start).
"""

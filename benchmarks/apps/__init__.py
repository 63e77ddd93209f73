"""Processes the benchmarks start: scheduler apps configured by the environment."""

"""Runnable examples of taskiq-dedup."""

"""FastAPI + Taskiq laid out like FastAPI-template, with taskiq-dedup in tkq.py."""

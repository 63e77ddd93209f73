"""The demo: ``python -m examples.fastapi_app.demo`` (``./dev demo``).

It runs the FastAPI example the way the problem shows up in practice - ``uvicorn
--workers 4`` with a scheduler inside every web worker, two more ``taskiq
scheduler`` processes and a ``taskiq worker`` - then counts, per schedule and
slot, how often each firing ran. See ``run.py`` for the options.
"""

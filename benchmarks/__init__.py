"""jobkit's benchmark harness: ``python -m benchmarks.run`` (``make bench``).

Every scenario runs jobkit and a same-run bare-SQL baseline (aiosqlite / asyncpg
directly) on SQLite and PostgreSQL, several times, and checks that every job ran
exactly once before a figure is reported.
"""

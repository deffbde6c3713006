"""The shared job engine: PostgreSQL, driven by procrastinate (docs/architecture.md).

Only imported when a profile sets ``engine_url``: embedded mode never imports
this package, psycopg or procrastinate (tests/unit/test_engine_config.py).

* ``connect``: the connection settings (URL, password file) and pools.
* ``schema``: our tables next to procrastinate's, ``engine init|check`` (both
  created and upgraded, procrastinate's from its own migration files).
* ``store``: what travels through the database (typed models), and the
  statements that move it: submit, take, accept once, poll, done.
* ``queue``: the procrastinate job carrying a key: defer, and move a stalled one.
* ``snapshot``: the drop folder's resources, read beneath its descriptor.
* ``ingest``: ``EnginePool``, the lane pool of an ingest node.
* ``spill``: ``SpillPool``, a local lane that sends its overflow to the engine.
* ``node``: the ``worker`` command (a worker node).
"""

"""Adapters that send asignals' signals from other libraries, or trace them.

Each module is imported on its own and needs its library (install the extra of the same name,
``pip install "asyncsignals[sqlalchemy]"``; ``otel`` for OpenTelemetry); the core never imports
them:

- :mod:`asignals.contrib.asgi`: ``SignalsMiddleware`` sends the request signals for any ASGI
  app (Starlette, FastAPI, ...), and ``lifespan`` runs the background dispatcher for the app's
  lifetime. Needs nothing beyond asignals.
- :mod:`asignals.contrib.sqlalchemy`: ``install()`` makes SQLAlchemy 2 sessions send the model
  signals (``pre_save``, ``post_save``, ..., ``m2m_changed``, ``pre_bulk``/``post_bulk``), and
  ``Outbox`` hands bridged events to the broker only if their transaction commits.
- :mod:`asignals.contrib.tortoise`: ``install()`` does the same for Tortoise ORM models.
- :mod:`asignals.contrib.redis`: ``RedisBridge``, shorthand for an :mod:`asignals.bridge`
  ``Bridge`` over Redis Streams, which delivers chosen signals to other processes' receivers.
- :mod:`asignals.contrib.opentelemetry`: ``instrument()`` gives sends and receivers spans and
  metrics; nothing changes on the send path until it is called.

Use them when the events you care about come from those libraries: receivers connect to
:mod:`asignals.signals` and work whichever adapter sends.
"""

"""``queue.driver.redis``: queues as Redis Streams with one consumer group each.

``config`` is light (no redis import): the loader validates with it; ``driver``
imports redis-py (the ``redis`` extra) and is imported only when a runtime builds one.
"""

"""``queue.driver.sqlite``: durable queues in one SQLite file (standard library only).

``config.py`` holds the entry and option models (imported to validate entries);
``store.py`` the file's layout and operations, ``writer.py`` the thread that commits
them in groups, ``driver.py`` the driver the runtime talks to.
"""

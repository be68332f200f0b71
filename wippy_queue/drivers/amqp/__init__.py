"""``queue.driver.amqp``: RabbitMQ through aio-pika (``pip install 'wippy-queue[amqp]'``).

``config`` holds the entry and option models and the capabilities and never imports
the client library; ``driver`` (with ``link``, ``topology``, ``wire``,
``subscription`` and ``settle``) does.
"""

"""``queue.driver.sqs``: Amazon SQS through aiobotocore (the extra ``wippy-queue[sqs]``).

``config`` holds the entry and option models and the capabilities and never imports
the client library; ``wire`` is the message format on SQS; ``driver`` (with
``client`` and ``batching``) talks to SQS.
"""

"""Message ids: random UUID4 strings, never repeated, not even across a fork."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

from wippy_queue.queue.message import new_message_id


def test_ids_are_canonical_uuid4_strings_and_distinct_across_refills() -> None:
    ids = [new_message_id() for _ in range(5000)]  # several refills of the pool
    for message_id in ids:
        parsed = uuid.UUID(message_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == message_id
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(sys.platform == "win32", reason="os.fork")
def test_a_forked_child_draws_ids_of_its_own() -> None:
    new_message_id()  # the parent's pool is filled: the child inherits it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids to the parent, then out without cleanup
        try:
            os.write(write, "\n".join(new_message_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_message_id() for _ in range(100)}
    assert len(child) == 100
    assert not parent & child

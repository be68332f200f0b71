"""Entry files -> typed, validated, cross-referenced entries."""

from wippy_queue.registry.entry import Entry, EntryModel, Location, Reference
from wippy_queue.registry.kinds import KindTable
from wippy_queue.registry.loader import load_registry
from wippy_queue.registry.registry import Registry

__all__ = ["Entry", "EntryModel", "KindTable", "Location", "Reference", "Registry", "load_registry"]

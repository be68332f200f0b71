"""Supervision of services (drivers, consumers): start order, restarts, graceful stop."""

from wippy_queue.lifecycle.service import Service, ServiceState
from wippy_queue.lifecycle.supervisor import Supervisor

__all__ = ["Service", "ServiceState", "Supervisor"]

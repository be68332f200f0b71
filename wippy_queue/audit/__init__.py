"""The tamper-evident audit trail: a hash-chained JSON-lines file of security decisions."""

from wippy_queue.audit.chain import VerifyResult, verify_file
from wippy_queue.audit.trail import AuditTrail, AuditUnavailable

__all__ = ["AuditTrail", "AuditUnavailable", "VerifyResult", "verify_file"]

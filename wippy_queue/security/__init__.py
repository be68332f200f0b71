"""Actors, the call context, the policy engine, the security middleware and the audit trail."""

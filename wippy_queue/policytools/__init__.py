"""Tools for policy authors: test cases, explanations and lint over policy entries.

- ``query``: one question (a consumer, or an actor with policies) put to the REAL
  decision path (``Security.scope_for`` + ``Scope.check``), as the guards ask it.
- ``cases``: the CASES.yaml format, read with file and line for every problem.
- ``runner``: runs cases and says which passed, with the deciding rule.
- ``rules``: every rule of a policy entry with the file and line it was written on,
  and each rule evaluated on its own.
- ``explain``: the decision, every rule that matched, and which one decided.
- ``model``: what a Casbin model's matcher compares, for lint.
- ``lint``: load problems, dead, shadowed and duplicate rules, actions never asked.
"""

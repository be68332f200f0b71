"""Scopes decide fast and fail closed: the decision cache, its invalidation, errors as
denials that are never cached, enforcement switched off, the rule index."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
from security_support import consumer, driver, func, load, queue

from wippy_queue.identity import Actor, Request, getter
from wippy_queue.security import scope as scope_module
from wippy_queue.security.enforcer import PolicyLoadError
from wippy_queue.security.models import CasbinPolicyConfig, WippyPolicyConfig
from wippy_queue.security.scope import Scope
from wippy_queue.security.units import CasbinUnit, PolicyUnit, Verdict, WippyRulesUnit

POLICIES = Path(__file__).parents[2] / "wippy_queue" / "policies"
RBAC = POLICIES / "rbac_with_tenants.conf"
ABAC = POLICIES / "abac_tenant.conf"
WORKER_A = Actor("worker-a", {"tenant": "tenant-a"})
TENANT_RULES = (
    "p, worker, tenant-a, app:*, queue.consume, allow\n"
    "p, worker, tenant-a, app:secret, queue.consume, deny\n"
    "p, worker, tenant-b, app:jobs, queue.consume, allow\n"
    "g, worker-a, worker, tenant-a\n"
    "g, worker-b, worker, tenant-b\n"
)


def consume(resource: str = "app:jobs", tenant: str | None = "tenant-a", **kw: Any) -> Request:
    return Request("queue.consume", resource, kw.pop("actor", WORKER_A), tenant=tenant, **kw)


def rbac_unit(csv: Path, *, index: tuple[str, ...] = ()) -> CasbinUnit:
    config = CasbinPolicyConfig(
        model=f"file://{RBAC}",
        policy=f"file://{csv}",
        request=["actor.id", "message.tenant", "resource", "action"],
        index=list(index),
    )
    return CasbinUnit("app:tenants", config)


class Counting(PolicyUnit):
    """Wraps a unit and counts how often it is really asked."""

    def __init__(self, inner: PolicyUnit) -> None:
        self.inner = inner
        self.policies = inner.policies
        self.calls = 0

    def decide(self, request: Request) -> Verdict:
        self.calls += 1
        return self.inner.decide(request)

    def cache_key(self, request: Request) -> Hashable | None:
        return self.inner.cache_key(request)


@pytest.fixture
def tenants_csv(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.csv"
    path.write_text(TENANT_RULES)
    return path


# -- the cache ------------------------------------------------------------------------


def test_decisions_are_cached_per_request(tenants_csv: Path) -> None:
    unit = Counting(rbac_unit(tenants_csv))
    scope = Scope("s", [unit])
    first = scope.check(consume())
    assert first.allowed and unit.calls == 1
    assert scope.check(consume()) is first and unit.calls == 1
    # anything the answer depends on is part of the key
    assert not scope.check(consume(tenant="tenant-b")).allowed
    assert not scope.check(consume("app:secret")).allowed
    assert not scope.check(consume(actor=Actor("worker-b", {"tenant": "tenant-b"}))).allowed
    assert scope.check(consume(actor=Actor("worker-b"), tenant="tenant-b")).allowed
    assert unit.calls == 5
    assert scope.check(consume(tenant="tenant-b")).allowed is False and unit.calls == 5
    assert (scope.checks, scope.hits) == (7, 2)


def test_a_full_cache_drops_its_older_half_not_everything(
    tenants_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scope_module, "CACHE_LIMIT", 4)
    unit = Counting(rbac_unit(tenants_csv))
    scope = Scope("s", [unit])
    queues = [f"app:q{i}" for i in range(6)]
    for queue_id in queues[:4]:
        scope.check(consume(queue_id))
    scope.check(consume(queues[4]))  # full: q0 and q1 go
    assert unit.calls == 5
    for queue_id in queues[2:5]:  # the newer half and the newest are still cached
        scope.check(consume(queue_id))
    assert unit.calls == 5
    scope.check(consume(queues[0]))
    assert unit.calls == 6


def test_clearing_the_cache_lets_a_changed_policy_take_effect(
    tmp_path: Path, tenants_csv: Path
) -> None:
    runtime = load(
        tmp_path,
        [
            driver(),
            queue("jobs"),
            func("record_async"),
            {
                "name": "tenants",
                "kind": "security.policy.casbin",
                "model": f"file://{RBAC}",
                "policy": f"file://{tenants_csv}",
                "request": ["actor.id", "message.tenant", "resource", "action"],
            },
            consumer("worker", "jobs", "record_async", actor="worker-a", policies=("tenants",)),
        ],
    )
    security = runtime.security
    scope = security.scopes["app:worker"]
    unit = security.casbin_units["app:tenants"]
    assert scope.check(consume()).allowed

    tenants_csv.write_text(
        TENANT_RULES.replace("app:*, queue.consume, allow", "x, queue.publish.queue, allow")
    )
    assert scope.check(consume()).allowed  # cached, the file is not re-read per message
    security.clear_caches()
    assert scope.check(consume()).allowed  # the file is read only by a reload
    unit.install(unit.load())
    security.clear_caches()
    assert not scope.check(consume()).allowed

    tenants_csv.write_text(TENANT_RULES)
    unit.install(unit.load())
    scope.clear()
    assert scope.check(consume()).allowed


def test_installing_new_rules_makes_cached_decisions_stale(tenants_csv: Path) -> None:
    # whoever installs rules (the file watcher, policy authoring tools) cannot serve a
    # decision made under the old ones, even before it drops the caches
    unit = rbac_unit(tenants_csv)
    scope = Scope("s", [unit])
    assert scope.check(consume()).allowed
    tenants_csv.write_text(
        TENANT_RULES.replace("app:*, queue.consume, allow", "x, queue.publish.queue, allow")
    )
    unit.install(unit.load())
    assert not scope.check(consume()).allowed


def test_a_broken_file_is_refused_by_load(tenants_csv: Path) -> None:
    unit = rbac_unit(tenants_csv)
    scope = Scope("s", [unit])
    tenants_csv.write_text("p, worker, tenant-a\n")
    with pytest.raises(PolicyLoadError, match="fields"):
        unit.load()
    scope.clear()
    assert scope.check(consume()).allowed


def test_typed_values_do_not_share_a_cache_entry() -> None:
    # 1, 1.0 and True are equal as dict keys but not to the eq operator ("1" != "1.0")
    config = WippyPolicyConfig.model_validate(
        {
            "policy": {
                "actions": "queue.consume",
                "resources": "*",
                "effect": "allow",
                "conditions": [{"field": "message.headers.n", "operator": "eq", "value": "1"}],
            }
        }
    )
    scope = Scope("s", [WippyRulesUnit([("app:p", config)])])
    assert scope.check(consume(headers={"n": 1})).allowed
    assert not scope.check(consume(headers={"n": 1.0})).allowed
    assert not scope.check(consume(headers={"n": True})).allowed
    assert scope.check(consume(headers={"n": "1"})).allowed


def test_casbin_gets_header_values_as_text(tmp_path: Path) -> None:
    model = tmp_path / "m.conf"
    model.write_text(
        "[request_definition]\nr = sub, prio\n[policy_definition]\np = sub, prio\n"
        "[policy_effect]\ne = some(where (p.eft == allow))\n"
        "[matchers]\nm = r.sub == p.sub && keyMatch(r.prio, p.prio)\n"
    )
    config = CasbinPolicyConfig(
        model=f"file://{model}",
        rules=["p, worker-a, 1*"],
        request=["actor.id", "message.headers.priority"],
    )
    scope = Scope("s", [CasbinUnit("app:c", config)])
    assert scope.check(consume(headers={"priority": 1})).allowed
    assert scope.check(consume(headers={"priority": "12"})).allowed
    decision = scope.check(consume(headers={"priority": 2}))
    assert (decision.allowed, decision.reason) == (False, "no_allow")
    assert not scope.check(consume(headers={})).allowed


def test_whole_objects_are_cached_by_the_attributes_the_matcher_reads(tmp_path: Path) -> None:
    config = CasbinPolicyConfig(
        model=f"file://{ABAC}",  # r.sub.tenant == r.obj.tenant
        policy=f"file://{POLICIES / 'abac_tenant.csv'}",
        request=["actor", "message", "action"],
    )
    unit = Counting(CasbinUnit("app:abac", config))
    scope = Scope("s", [unit])
    assert scope.check(consume(tenant="tenant-a")).allowed
    assert not scope.check(consume(tenant="tenant-b")).allowed
    assert not scope.check(consume(tenant=None)).allowed
    assert scope.check(consume(tenant="tenant-a", headers={"other": "x"})).allowed  # cached
    assert unit.calls == 3
    other_tenant = Actor("worker-a", {"tenant": "tenant-b"})  # same id, another tenant
    assert scope.check(consume(tenant="tenant-b", actor=other_tenant)).allowed
    assert not scope.check(consume(tenant="tenant-a", actor=other_tenant)).allowed
    assert unit.calls == 5


@pytest.mark.parametrize(
    "matcher",
    [
        'r.sub.tenant == r.obj.tenant && r.sub.id[0] == "w"',  # indexed: past the attribute
        "r.sub.tenant == r.obj.tenant && r.obj.headers != None",  # an attribute not keyed
        "r.sub.tenant == r.obj.tenant && r.sub != None",  # the whole object
    ],
)
def test_a_matcher_reading_more_of_an_object_is_not_cached(tmp_path: Path, matcher: str) -> None:
    model = tmp_path / "m.conf"
    model.write_text(
        "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = act\n"
        "[policy_effect]\ne = some(where (p.eft == allow))\n"
        f"[matchers]\nm = {matcher} && r.act == p.act\n"
    )
    config = CasbinPolicyConfig(
        model=f"file://{model}", rules=["p, queue.consume"], request=["actor", "message", "action"]
    )
    unit = Counting(CasbinUnit("app:abac", config))
    scope = Scope("s", [unit])
    assert scope.check(consume(tenant="tenant-a")).allowed
    assert scope.check(consume(tenant="tenant-a")).allowed
    assert not scope.check(consume(tenant="tenant-b")).allowed
    assert unit.calls == 3


# -- failing closed ------------------------------------------------------------------


class Flaky(PolicyUnit):
    """Raises on its first ``failures`` calls, then allows."""

    policies = ("app:flaky",)

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def decide(self, request: Request) -> Verdict:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("policy store unreachable")
        return Verdict("allow", "app:flaky", ("rule",))

    def cache_key(self, request: Request) -> Hashable | None:
        return ()


def test_an_error_while_deciding_is_a_deny_and_is_not_cached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unit = Flaky(failures=1)
    scope = Scope("s", [unit])
    decision = scope.check(consume())
    assert (decision.allowed, decision.reason) == (False, "error")
    assert decision.error == "RuntimeError: policy store unreachable"
    assert "policy store unreachable" in decision.describe()
    assert "deciding queue.consume failed" in caplog.text
    assert scope.check(consume()).allowed  # asked again, not served the error
    assert scope.check(consume()).allowed and unit.calls == 2


def test_an_error_in_one_unit_denies_even_when_another_allows(tenants_csv: Path) -> None:
    scope = Scope("s", [rbac_unit(tenants_csv), Flaky(failures=10)])
    assert scope.check(consume()).reason == "error"


def test_a_condition_that_raises_is_a_deny() -> None:
    config = WippyPolicyConfig.model_validate(
        {
            "policy": {
                "actions": "*",
                "resources": "*",
                "effect": "allow",
                # a pattern taken from the request: only known at message time
                "conditions": [
                    {"field": "actor.id", "operator": "matches", "value_from": "meta.pattern"}
                ],
            }
        }
    )
    scope = Scope("s", [WippyRulesUnit([("app:p", config)])])
    assert scope.check(consume(headers={"pattern": "^worker"})).allowed
    decision = scope.check(consume(headers={"pattern": "(unclosed"}))
    assert (decision.allowed, decision.reason) == (False, "error")


@pytest.mark.parametrize("kind", ["casbin", "wippy", "indexed"])
def test_switching_enforcement_off_makes_decide_refuse(kind: str, tenants_csv: Path) -> None:
    if kind == "wippy":
        config = WippyPolicyConfig.model_validate(
            {"policy": {"actions": "*", "resources": "*", "effect": "deny"}}
        )
        unit: Any = WippyRulesUnit([("app:deny_all", config)])
    else:
        unit = rbac_unit(tenants_csv, index=("message.tenant",) if kind == "indexed" else ())
    scope = Scope("s", [unit])
    request = consume("other:queue")
    before = scope.check(request)
    assert not before.allowed and before.reason in ("policy", "no_allow")
    # pycasbin answers "allow" to everything once enforcement is off
    casbin_enforcer = unit._enforcer._e
    casbin_enforcer.enable_enforce(False)
    tokens = casbin_enforcer.model.model["r"]["r"].tokens
    assert casbin_enforcer.enforce_ex(*[""] * len(tokens))[0] is True
    scope.clear()
    after = scope.check(request)
    assert (after.allowed, after.reason) == (False, "error")
    assert "switched off" in (after.error or "")
    assert not scope.check(consume()).allowed


# -- the index -----------------------------------------------------------------------


def big_tenant_csv(path: Path, tenants: int) -> Path:
    lines = []
    for t in range(tenants):
        lines += [
            f"p, worker, t{t}, app:*, queue.consume, allow",
            f"p, worker, t{t}, app:secret, queue.consume, deny",
            f"g, w{t}, worker, t{t}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_index_gives_the_same_answers(tmp_path: Path) -> None:
    csv = big_tenant_csv(tmp_path / "big.csv", 50)
    plain = Scope("plain", [rbac_unit(csv)])
    indexed = Scope("indexed", [rbac_unit(csv, index=("message.tenant",))])
    for actor in ("w3", "w7", "nobody"):
        for tenant in ("t3", "t7", "t99", None):
            for resource in ("app:jobs", "app:secret", "other:jobs"):
                request = consume(resource, tenant, actor=Actor(actor))
                a, b = plain.check(request), indexed.check(request)
                assert (a.allowed, a.reason, a.rule) == (b.allowed, b.reason, b.rule), request


def test_an_index_asks_only_the_tenants_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted, not timed: while a decision is made, the rules the matcher can see are
    the request's tenant's two, of the 4,000 ``p`` rules (without the index, all)."""
    import contextlib
    from collections.abc import Iterator

    from wippy_queue.security import enforcer as enforcer_module

    csv = big_tenant_csv(tmp_path / "big.csv", 2000)
    indexed = rbac_unit(csv, index=("message.tenant",))
    request = consume("app:jobs", "t1500", actor=Actor("w1500"))
    seen: list[list[Any]] = []
    filtered = enforcer_module.fast_policy_filter

    @contextlib.contextmanager
    def counting(policy: Any, *keys: Any) -> Iterator[None]:
        with filtered(policy, *keys):
            seen.append(list(policy))
            yield

    monkeypatch.setattr(enforcer_module, "fast_policy_filter", counting)
    assert indexed.decide(request).effect == "allow"
    assert [sorted(rule[:2] for rule in rules) for rules in seen] == [
        [["worker", "t1500"], ["worker", "t1500"]]
    ]


@pytest.mark.parametrize(
    "path",
    [
        "action",
        "resource",
        "actor",
        "actor.id",
        "actor.meta.tenant",
        "actor.meta.missing",
        "meta.kind",
        "meta.headers.kind",
        "message",
        "message.headers.kind",
        "message.headers.headers.kind",
        "message.publisher",
        "message.tenant",
    ],
)
@pytest.mark.parametrize("actor", [WORKER_A, None])
def test_a_compiled_getter_reads_what_value_reads(path: str, actor: Actor | None) -> None:
    headers = {"kind": "invoice", "headers.kind": "nested", "attempts": 2}
    request = Request("queue.consume", "app:jobs", actor, headers, "svc-a", "tenant-a")
    assert getter(path)(request) == request.value(path)

from __future__ import annotations

import pytest

from llmops.policy import load_policy
from llmops.prompts import PromptLibrary
from llmops.router import Router
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def router_env():
    policy = load_policy(ROOT / "llmops.yaml")
    lib = PromptLibrary(ROOT / "prompts")
    return Router(policy), lib


def _route(router_env, **kw):
    router, lib = router_env
    args = dict(
        meta=lib.meta("contract_review"),
        user="ken.tanaka@example.com",
        department="legal",
        data_class="internal",
        prompt_tokens=500,
        max_tokens=600,
    )
    args.update(kw)
    return router.route(**args)


def test_router_priorities(router_env):
    assert _route(router_env, priority="cost").model == "sim-small"
    assert _route(router_env, priority="speed").model == "sim-small"
    # quality = cheapest model that meets the prompt's threshold (0.7) -> not the most expensive
    assert _route(router_env, priority="quality").model == "sim-small"
    d = _route(router_env, priority="balanced")
    assert d.model and d.reason.startswith("route.balanced") and len(d.fallbacks) == 2


def test_router_hard_constraints(router_env):
    d = _route(router_env, data_class="restricted")
    assert d.model == "sim-large"  # only it is cleared for restricted data
    d = _route(router_env, prompt_tokens=20_000)
    assert (
        d.model in ("sim-medium", "sim-large") and "route.context" in _route(router_env, prompt_tokens=200_000).reason
    )
    d = _route(router_env, user="hana.sato@example.com", department="support", pinned="sim-large")
    assert d.model is None and d.denied


@pytest.mark.parametrize("priority", ["cost", "quality", "speed", "balanced"])
def test_fallbacks_are_checked_against_the_roles_too(router_env, priority):
    """A fallback is a model the request may be sent to: the person's roles must allow it like the primary.
    hana.sato (analyst) may use sim-small and sim-medium; ken.tanaka (lawyer) every sim-* model."""
    _router, lib = router_env
    d = _route(
        router_env,
        meta=lib.meta("support_ticket_classify"),
        user="hana.sato@example.com",
        department="support",
        priority=priority,
    )
    assert d.model and {d.model, *d.fallbacks} <= {"sim-small", "sim-medium"} and "sim-large" not in d.fallbacks
    assert len(d.fallbacks) == 1  # the only other allowed model
    d = _route(router_env, priority=priority)  # ken.tanaka: the third model is allowed, so it is a fallback
    assert {d.model, *d.fallbacks} == {"sim-small", "sim-medium", "sim-large"}

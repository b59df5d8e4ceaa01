"""Access control: deny unless the policy allows.

A person belongs to one department and has roles; a role allows prompt names, catalog models and
data classes (glob patterns). Every model a request may touch — primary or fallback — is checked.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from llmops.policy import Policy


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str

    def __bool__(self) -> bool:
        return self.allowed


def _match(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def check_request(policy: Policy, user: str, department: str, prompt: str, data_class: str) -> Decision:
    person = policy.people.get(user)
    if person is None:
        return Decision(False, f"access.unknown_user: {user!r} is not in the policy")
    if department not in policy.departments:
        return Decision(False, f"access.unknown_department: {department!r} is not in the policy")
    if person.department != department:
        return Decision(False, f"access.department: {user} belongs to {person.department}, not {department}")
    roles = [policy.roles[r] for r in person.roles]
    if not any(_match(prompt, r.prompts) for r in roles):
        return Decision(False, f"access.prompt: roles {person.roles} may not run prompt {prompt!r}")
    if not any(data_class in r.data_classes for r in roles):
        return Decision(False, f"access.data_class: roles {person.roles} may not use {data_class} data")
    return Decision(True, "access.allowed")


def check_model(policy: Policy, user: str, department: str, model: str) -> Decision:
    person = policy.people.get(user)
    if person is None:
        return Decision(False, f"access.unknown_user: {user!r} is not in the policy")
    dept = policy.departments.get(department)
    if dept is None:
        return Decision(False, f"access.unknown_department: {department!r}")
    if model not in policy.models:
        return Decision(False, f"access.unknown_model: {model!r} is not in the catalog")
    if not dept.allows_model(model):
        return Decision(False, f"access.department_models: {department} may not use {model}")
    if not any(_match(model, policy.roles[r].models) for r in person.roles):
        return Decision(False, f"access.role_models: roles {person.roles} may not use {model}")
    return Decision(True, "access.allowed")

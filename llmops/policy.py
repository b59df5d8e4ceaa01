"""The platform policy file ``llmops.yaml``: departments, people, roles, the model catalog, routing and
guard policy. Validation is strict: an unknown key, a bad value or a dangling reference is one
:class:`~llmops.errors.ConfigError` line that names the file, the key and the fix.
"""

from __future__ import annotations

import fnmatch
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmops.errors import ConfigError
from llmops.pricing import litellm_price

DataClass = Literal["public", "internal", "confidential", "restricted"]
DATA_CLASS_RANK: dict[str, int] = {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}
Priority = Literal["cost", "quality", "speed", "balanced"]
PiiAction = Literal["redact", "block", "allow"]
Provider = Literal[
    "simulator", "openai", "anthropic", "azure", "gemini", "bedrock", "ollama", "vllm", "openai_compatible"
]

SELF_HOSTED_PROVIDERS = frozenset({"simulator", "ollama", "vllm"})  # run by the company, never a third party
SELF_HOSTABLE_PROVIDERS = SELF_HOSTED_PROVIDERS | {"openai_compatible"}  # may be declared self_hosted: true


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Strict):
    """Requests and tokens per minute (tokens charged as prompt tokens + max_tokens, as providers do)."""

    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)


class Department(_Strict):
    monthly_budget_usd: Decimal = Field(gt=0)
    head: str | None = None
    recipients: list[str] = Field(default_factory=list)
    allowed_models: list[str] = Field(default_factory=lambda: ["*"])
    alert_thresholds: list[float] = Field(default_factory=lambda: [0.8])
    rate_limit: RateLimit | None = None

    def allows_model(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pat) for pat in self.allowed_models)


class Person(_Strict):
    department: str
    roles: list[str] = Field(min_length=1)
    email: str | None = None
    monthly_budget_usd: Decimal | None = Field(None, gt=0, description="optional personal monthly limit")
    rate_limit: RateLimit | None = None


class Role(_Strict):
    prompts: list[str] = Field(default_factory=list, description="glob patterns of prompt names")
    models: list[str] = Field(default_factory=list, description="glob patterns of catalog model names")
    data_classes: list[DataClass] = ["public", "internal"]


class ModelEntry(_Strict):
    litellm_model: str
    provider: Provider
    api_base: str | None = None
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    airflow_conn_id: str | None = Field(None, description="Airflow connection holding the API key")
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(4096, gt=0)
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    clearance: DataClass = "internal"
    self_hosted: bool | None = Field(
        None,
        description="an endpoint the company runs itself; default: true for simulator, ollama and vllm; may be "
        "set for openai_compatible (never for a hosted provider). Restricted clearance requires it",
    )
    tier: Literal["small", "medium", "large"] = "medium"
    input_usd_per_mtok: Decimal | None = Field(None, ge=0)
    output_usd_per_mtok: Decimal | None = Field(None, ge=0)
    quality: float = Field(0.7, ge=0, le=1, description="catalog default until evaluations exist")
    latency_ms: int = Field(1000, gt=0, description="catalog default p95 until the ledger has data")

    @property
    def is_self_hosted(self) -> bool:
        return self.provider in SELF_HOSTED_PROVIDERS if self.self_hosted is None else self.self_hosted

    def price(self) -> tuple[Decimal, Decimal]:
        """(input, output) USD per million tokens. Policy loading guarantees one exists."""
        if self.input_usd_per_mtok is not None and self.output_usd_per_mtok is not None:
            return self.input_usd_per_mtok, self.output_usd_per_mtok
        found = litellm_price(self.litellm_model)
        if found is None:  # pragma: no cover - rejected at load time
            raise ConfigError(f"model {self.litellm_model} has no price")
        return found


class Routing(_Strict):
    default_priority: Priority = "balanced"
    default_models: list[str] = Field(min_length=1)
    fallback_depth: int = Field(2, ge=0, le=5)
    budget_shortfall: Literal["refuse", "downgrade"] = Field(
        "refuse", description="a batch whose estimate exceeds the remaining budget is refused or re-routed by cost"
    )
    balanced_weights: dict[Literal["quality", "cost", "speed"], float] = {
        "quality": 0.5,
        "cost": 0.3,
        "speed": 0.2,
    }


def _known_pii(types: dict[str, PiiAction]) -> dict[str, PiiAction]:
    from llmops.pii import recognizers

    known = {r.entity for r in recognizers()}
    for name in types:
        if name not in known:
            raise ValueError(f"unknown PII type {name!r} (known: {', '.join(sorted(known))})")
    return types


class DataClassRule(_Strict):
    """How the guard treats one data class: stricter per-type actions, mandatory redaction, restoration."""

    pii: dict[str, PiiAction] = Field(default_factory=dict, description="per-type overrides for this class")
    mandatory_redaction: bool = Field(
        default=False, description="no personal data leaves in clear: 'allow' becomes 'redact'"
    )
    restore_placeholders: bool | None = Field(None, description="override guard.restore_placeholders")

    _check = field_validator("pii")(_known_pii)


class GuardRules:
    """The effective guard rules for one data class."""

    def __init__(self, policy: GuardPolicy, rule: DataClassRule | None) -> None:
        self._policy, self._rule = policy, rule
        self.restore = policy.restore_placeholders
        if rule is not None and rule.restore_placeholders is not None:
            self.restore = rule.restore_placeholders

    def action_for(self, pii_type: str) -> PiiAction:
        action = self._policy.action_for(pii_type)
        if self._rule is not None:
            action = self._rule.pii.get(pii_type, action)
            if self._rule.mandatory_redaction and action == "allow":
                action = "redact"
        return action


class GuardPolicy(_Strict):
    pii: dict[str, PiiAction] = Field(default_factory=dict)
    default_pii_action: PiiAction = "redact"
    injection: Literal["block", "allow"] = "block"
    injection_model: bool = Field(
        default=True, description="screen with the learned layer too (injection.learned), not only the rules"
    )
    injection_threshold: float | None = Field(
        default=None,
        allow_inf_nan=False,  # NaN would never block (every comparison is False): fail closed, refuse it
        description="the learned layer's decision value to block at; default: the shipped model's",
    )
    injection_rules_block: bool = Field(
        default=False,
        description="every injection rule's hit blocks outright; default: a hit is strong evidence the learned "
        "layer weighs (the model's rule_weight), so documentation and reports that quote an attack can pass",
    )
    restore_placeholders: bool = False
    ja_name_pipeline: bool = Field(default=False, description="Japanese person names through ja-ginza (extra 'ja')")
    data_classes: dict[DataClass, DataClassRule] = Field(default_factory=dict)

    _check = field_validator("pii")(_known_pii)

    def action_for(self, pii_type: str) -> PiiAction:
        return self.pii.get(pii_type, self.default_pii_action)

    def for_class(self, data_class: str) -> GuardRules:
        return GuardRules(self, self.data_classes.get(data_class))  # type: ignore[call-overload]


class Policy(_Strict):
    version: Literal[1] = 1
    usd_jpy: Decimal = Field(Decimal(150), gt=0)
    admins: list[str] = Field(default_factory=list)
    finance: list[str] = Field(default_factory=list)
    departments: dict[str, Department] = Field(min_length=1)
    people: dict[str, Person] = Field(min_length=1)
    roles: dict[str, Role] = Field(min_length=1)
    models: dict[str, ModelEntry] = Field(min_length=1)
    routing: Routing
    guard: GuardPolicy = Field(default_factory=lambda: GuardPolicy())
    prompt_budgets: dict[str, Decimal] = Field(default_factory=dict, description="optional monthly USD per prompt")
    alert_thresholds: list[float] = Field(default_factory=lambda: [0.8], description="for person/prompt budgets")

    @model_validator(mode="after")
    def _references(self) -> Policy:
        for name, person in self.people.items():
            if person.department not in self.departments:
                raise _RefError(
                    f"people.{name}.department",
                    f"unknown department {person.department!r}",
                    f"use one of: {', '.join(sorted(self.departments))}",
                )
            for role in person.roles:
                if role not in self.roles:
                    raise _RefError(
                        f"people.{name}.roles",
                        f"unknown role {role!r}",
                        f"define it under roles: or use one of: {', '.join(sorted(self.roles))}",
                    )
        for name in self.routing.default_models:
            if name not in self.models:
                raise _RefError(
                    "routing.default_models", f"unknown model {name!r}", "list models defined under models:"
                )
        for name, entry in self.models.items():
            if entry.self_hosted and entry.provider not in SELF_HOSTABLE_PROVIDERS:
                raise _RefError(
                    f"models.{name}.self_hosted",
                    f"provider {entry.provider!r} is a hosted service, not a self-hosted endpoint",
                    "remove self_hosted (only simulator, ollama, vllm and openai_compatible endpoints can be)",
                )
            if entry.clearance == "restricted" and not entry.is_self_hosted:
                raise _RefError(
                    f"models.{name}.clearance",
                    "restricted data may only go to a self-hosted endpoint, and this model is not one",
                    "lower its clearance to confidential, or serve it yourself (ollama, vllm, or an "
                    "openai_compatible endpoint you run, marked self_hosted: true)",
                )
            if (entry.input_usd_per_mtok is None) != (entry.output_usd_per_mtok is None):
                raise _RefError(
                    f"models.{name}",
                    "only one of input_usd_per_mtok / output_usd_per_mtok is set",
                    "set both prices or neither",
                )
            if entry.input_usd_per_mtok is None and litellm_price(entry.litellm_model) is None:
                raise _RefError(
                    f"models.{name}",
                    f"no price: litellm's cost map does not know {entry.litellm_model!r}",
                    "add input_usd_per_mtok and output_usd_per_mtok (never a silent $0)",
                )
        return self

    # -- lookups --------------------------------------------------------------------------------
    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise ConfigError(f"unknown model {name!r}", f"use one of: {', '.join(sorted(self.models))}") from None


class _RefError(ValueError):
    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.key, self.problem, self.fix = key, problem, fix


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    """Safe YAML with duplicate keys rejected; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found", "create it or point the setting at the right file") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}", "fix the YAML syntax") from None


def describe_validation_error(source: str, exc: ValidationError, model: type[BaseModel]) -> ConfigError:
    """Turn pydantic's first error into one line: file, dotted key, problem, fix."""
    errors = exc.errors()
    err = errors[0]
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _RefError):
        key, problem, fix = ctx_err.key, ctx_err.problem, ctx_err.fix
    else:
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            problem = f"unknown key {loc[-1]!r}"
            fix = "remove it or correct the spelling" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif kind == "missing":
            problem, fix = "required key is missing", f"add {loc[-1]!r}"
        else:
            shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
            problem = f"{err['msg']} (got {shown})"
            fix = "correct the value"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return ConfigError(f"{source}: {key}: {problem}{more}", fix)


def _allowed_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return []
            current = field.annotation
        else:
            args = getattr(current, "__args__", ())
            current = args[-1] if args else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def load_policy(path: Path) -> Policy:
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping", "see the llmops.yaml shipped with the project")
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise describe_validation_error(str(path), exc, Policy) from None

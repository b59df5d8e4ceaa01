"""The prompt library: ``prompts/<name>/prompt.yaml`` plus one Jinja2 file per semantic version.

References: ``name`` (= ``name@production`` if that alias exists, else latest), ``name@latest`` (highest
semantic version: 10.0.0 > 9.0.0), ``name@<alias>``, ``name@2.1.0`` (exact). Rendering happens in
jinja2's ImmutableSandboxedEnvironment with StrictUndefined, typed variables and a size cap.

A version file may define ``{% block system %}`` and ``{% block user %}``; without blocks the whole
rendered text is the user message. Record data only ever enters as a *variable*, never as source.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmops.errors import PromptError, RenderError
from llmops.policy import describe_validation_error, load_yaml

VarType = Literal["string", "integer", "number", "boolean", "list", "object"]
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "list": (list, tuple),
    "object": (dict,),
}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
_VERSION_FILE_RE = re.compile(r"^v?(\d+(?:\.\d+){0,2})\.j2$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variable(_Strict):
    type: VarType = "string"
    required: bool = True
    description: str = ""
    max_length: int | None = Field(None, gt=0)
    default: Any = None


class OutputSpec(_Strict):
    format: Literal["text", "json"] = "text"
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    max_chars: int | None = Field(None, gt=0)
    min_chars: int = Field(0, ge=0)


class PromptMeta(_Strict):
    name: str
    description: str
    owner: str
    task_type: Literal["classification", "summarization", "extraction", "generation", "analysis", "evaluation"]
    variables: dict[str, Variable]
    output: OutputSpec = Field(default_factory=lambda: OutputSpec.model_validate({}))
    parameters: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 512})
    aliases: dict[str, str] = Field(default_factory=dict)
    candidate_models: list[str] = Field(default_factory=list)
    quality_threshold: float = Field(0.7, ge=0, le=1)
    metric_weights: dict[str, float] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be lower_snake_case, 2-64 characters")
        return v

    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        allowed = {"temperature", "max_tokens", "top_p", "stop", "seed", "response_format"}
        unknown = set(v) - allowed
        if unknown:
            raise ValueError(f"unknown model parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return v


@dataclass(frozen=True)
class PromptVersion:
    meta: PromptMeta
    version: Version
    path: Path
    source: str

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def ref(self) -> str:
        return f"{self.meta.name}@{self.version}"

    @property
    def source_hash(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RenderedPrompt:
    prompt: PromptVersion
    messages: list[dict[str, str]]
    variables: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(m["content"] for m in self.messages)


class _CappedSandbox(ImmutableSandboxedEnvironment):
    """Sandbox that also refuses to build huge strings/lists with ``*`` or ``**``."""

    intercepted_binops = frozenset({"*", "**"})
    max_product = 100_000

    def call_binop(self, context: jinja2.runtime.Context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > 100:
                raise jinja2.exceptions.SecurityError("exponent too large in template")
            return operator.pow(left, right)
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > self.max_product:
                raise jinja2.exceptions.SecurityError("template builds an oversized sequence")
        return operator.mul(left, right)


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> jinja2.Template:
    """A template source compiled once (compiling costs ~10 ms; templates are immutable and reentrant)."""
    return _environment().from_string(source)


@functools.cache
def _environment() -> _CappedSandbox:
    return _CappedSandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class PromptLibrary:
    """All prompts under one folder, loaded and validated eagerly (they are small)."""

    def __init__(self, root: Path, max_rendered_chars: int = 48_000) -> None:
        self.root = root
        self.max_rendered_chars = max_rendered_chars
        self._prompts: dict[str, tuple[PromptMeta, dict[Version, PromptVersion]]] = {}
        if not root.is_dir():
            raise PromptError(f"prompt folder {root} does not exist", "set LLMOPS_PROMPTS_DIR or create it")
        for meta_path in sorted(root.glob("*/prompt.yaml")):
            self._load(meta_path)

    # -- loading --------------------------------------------------------------------------------
    def _load(self, meta_path: Path) -> None:
        raw = load_yaml(meta_path)
        try:
            meta = PromptMeta.model_validate(raw)
        except ValidationError as exc:
            raise describe_validation_error(str(meta_path), exc, PromptMeta) from None
        folder = meta_path.parent
        if meta.name != folder.name:
            raise PromptError(
                f"{meta_path}: name {meta.name!r} differs from its folder {folder.name!r}",
                "make the name and the folder the same",
            )
        versions: dict[Version, PromptVersion] = {}
        for file in sorted(folder.glob("*.j2")):
            m = _VERSION_FILE_RE.match(file.name)
            if not m:
                raise PromptError(
                    f"{file}: not a version file name", "name version files like 1.0.0.j2 (semantic version)"
                )
            version = Version(m.group(1))
            if version in versions:
                raise PromptError(f"{file}: version {version} defined twice", "keep one file per version")
            source = file.read_text(encoding="utf-8")
            pv = PromptVersion(meta=meta, version=version, path=file, source=source)
            self._check_template(pv)
            versions[version] = pv
        if not versions:
            raise PromptError(f"{folder}: no version files", "add at least one <version>.j2 template")
        for alias, target in meta.aliases.items():
            if _parse_version(target) not in versions:
                raise PromptError(
                    f"{meta_path}: alias {alias!r} points at missing version {target}",
                    f"point it at one of: {', '.join(str(v) for v in sorted(versions))}",
                )
        self._prompts[meta.name] = (meta, versions)

    def _check_template(self, pv: PromptVersion) -> None:
        env = _environment()
        try:
            ast = env.parse(pv.source)
        except jinja2.TemplateSyntaxError as exc:
            raise PromptError(f"{pv.path}:{exc.lineno}: template syntax error: {exc.message}") from None
        used = jinja2.meta.find_undeclared_variables(ast)
        undeclared = sorted(used - set(pv.meta.variables))
        if undeclared:
            raise PromptError(
                f"{pv.path}: uses undeclared variable(s) {', '.join(undeclared)}",
                f"declare them under variables: in {pv.path.parent / 'prompt.yaml'}",
            )

    # -- queries --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._prompts)

    def meta(self, name: str) -> PromptMeta:
        return self._entry(name)[0]

    def versions(self, name: str) -> list[PromptVersion]:
        return [v for _, v in sorted(self._entry(name)[1].items())]

    def _entry(self, name: str) -> tuple[PromptMeta, dict[Version, PromptVersion]]:
        try:
            return self._prompts[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise PromptError(f"unknown prompt {name!r}", f"use one of: {known} (see `llmops prompts list`)") from None

    def resolve(self, ref: str) -> PromptVersion:
        name, _, selector = ref.strip().partition("@")
        meta, versions = self._entry(name)
        if not selector:
            selector = "production" if "production" in meta.aliases else "latest"
        if selector == "latest":
            return versions[max(versions)]
        if selector in meta.aliases:
            return versions[_parse_version(meta.aliases[selector])]
        try:
            wanted = Version(selector)
        except InvalidVersion:
            raise PromptError(
                f"unknown alias {selector!r} for prompt {name!r}",
                f"use latest, a version, or one of the aliases: {', '.join(sorted(meta.aliases)) or '(none)'}",
            ) from None
        if wanted not in versions:
            raise PromptError(
                f"prompt {name!r} has no version {selector}",
                f"use one of: {', '.join(str(v) for v in sorted(versions))}",
            )
        return versions[wanted]

    # -- rendering ------------------------------------------------------------------------------
    def check_variables(self, pv: PromptVersion, variables: Mapping[str, Any]) -> dict[str, Any]:
        """Validate names, presence, types and sizes; returns the variables with defaults applied."""
        declared = pv.meta.variables
        extra = sorted(set(variables) - set(declared))
        if extra:
            raise RenderError(
                f"{pv.ref}: undeclared variable(s) {', '.join(extra)}",
                f"pass only declared variables ({', '.join(sorted(declared))}) or declare them in prompt.yaml",
            )
        values: dict[str, Any] = {}
        for vname, spec in declared.items():
            value = variables.get(vname)
            if value is None:
                if spec.required and spec.default is None:
                    raise RenderError(
                        f"{pv.ref}: missing variable {vname!r}", f"provide {vname!r} (a {spec.type}) for every record"
                    )
                value = spec.default
                if value is None:
                    continue
            ok = isinstance(value, _PY_TYPES[spec.type]) and not (spec.type != "boolean" and isinstance(value, bool))
            if not ok:
                raise RenderError(
                    f"{pv.ref}: variable {vname!r} should be {spec.type}, got {type(value).__name__}",
                    f"pass a {spec.type} for {vname!r}",
                )
            if spec.max_length is not None and isinstance(value, str | list) and len(value) > spec.max_length:
                raise RenderError(
                    f"{pv.ref}: variable {vname!r} is {len(value)} long, over its max_length {spec.max_length}",
                    "shorten the input or raise max_length in prompt.yaml",
                )
            values[vname] = value
        return values

    def render(self, ref: str | PromptVersion, variables: Mapping[str, Any]) -> RenderedPrompt:
        pv = self.resolve(ref) if isinstance(ref, str) else ref
        values = self.check_variables(pv, variables)
        try:
            template = _compiled(pv.source)
            if "system" in template.blocks or "user" in template.blocks:
                ctx = template.new_context(values)
                messages = []
                for role in ("system", "user"):
                    if role in template.blocks:
                        content = "".join(template.blocks[role](ctx)).strip()
                        if content:
                            messages.append({"role": role, "content": content})
            else:
                messages = [{"role": "user", "content": template.render(values).strip()}]
        except jinja2.UndefinedError as exc:
            raise RenderError(f"{pv.ref}: {exc.message}", "provide the variable or fix the template") from None
        except jinja2.exceptions.SecurityError as exc:
            raise RenderError(f"{pv.ref}: template refused by the sandbox: {exc}") from None
        total = sum(len(m["content"]) for m in messages)
        if total > self.max_rendered_chars:
            raise RenderError(
                f"{pv.ref}: rendered prompt is {total} characters, over the cap of {self.max_rendered_chars}",
                "shorten the input or raise LLMOPS_MAX_RENDERED_CHARS",
            )
        return RenderedPrompt(prompt=pv, messages=messages, variables=values)


def _parse_version(text: str) -> Version:
    try:
        return Version(str(text))
    except InvalidVersion:
        raise PromptError(f"{text!r} is not a semantic version", "use a version like 2.1.0") from None


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)

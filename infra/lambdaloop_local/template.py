"""Read template.yaml: the one source of truth for the local emulator and the tests.

The loader turns CloudFormation's short tags (``!Ref``, ``!GetAtt``, ``!Sub``, ...) into their
long form, so callers only ever see ``{"Ref": ...}``, ``{"Fn::GetAtt": [...]}`` and so on.
``Template.functions()`` applies ``Globals.Function`` the way SAM does (maps merge, lists
concatenate, scalars and intrinsics are overridden, ``Architectures`` is replaced), and
``Resolver`` turns intrinsics into local values (a table name, a queue URL, a Redis address).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

__all__ = [
    "TEMPLATE_PATH",
    "FunctionSpec",
    "Resolver",
    "Template",
    "TemplateError",
    "load_template",
    "merge_globals",
]

TEMPLATE_PATH: Path = Path(__file__).resolve().parents[2] / "template.yaml"

_DEFAULT_TIMEOUT = 3  # seconds: what Lambda uses when the template says nothing
_DEFAULT_MEMORY_SIZE = 128  # MB
_DEFAULT_ARCHITECTURES = ("x86_64",)
# SAM replaces these lists instead of concatenating them with Globals.
_REPLACED_LISTS = frozenset({"Architectures"})
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class TemplateError(Exception):
    """The template is unreadable, or something in it cannot be resolved locally."""


# ------------------------------------------------------------------------------------ loading


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that knows CloudFormation's short tags (registered below, on this class only)."""


# CloudFormation reads dates as plain strings (e.g. a policy's Version: 2012-10-17).
_CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_SHORT_TAGS = {
    "!Ref": "Ref",
    "!Condition": "Condition",
    **{
        f"!{name}": f"Fn::{name}"
        for name in (
            "And",
            "Base64",
            "Cidr",
            "Equals",
            "FindInMap",
            "GetAZs",
            "GetAtt",
            "If",
            "ImportValue",
            "Join",
            "Not",
            "Or",
            "Select",
            "Split",
            "Sub",
            "Transform",
        )
    },
}


def _split_get_att(value: Any) -> Any:
    """``!GetAtt Cache.Endpoint.Address`` -> ``["Cache", "Endpoint.Address"]``."""
    if isinstance(value, str):
        logical_id, dot, attribute = value.partition(".")
        if not dot or not logical_id or not attribute:
            raise TemplateError(f"!GetAtt {value!r}: expected LogicalId.Attribute")
        return [logical_id, attribute]
    return value


def _short_tag_constructor(long_name: str) -> Callable[[_CfnLoader, yaml.Node], dict[str, Any]]:
    def construct(loader: _CfnLoader, node: yaml.Node) -> dict[str, Any]:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        elif isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node, deep=True)
        else:  # pragma: no cover - yaml has no other node kinds
            raise TemplateError(f"unsupported node for {node.tag}")
        if long_name == "Fn::GetAtt":
            value = _split_get_att(value)
        return {long_name: value}

    return construct


for _tag, _long_name in _SHORT_TAGS.items():
    _CfnLoader.add_constructor(_tag, _short_tag_constructor(_long_name))


def load_template(path: Path | None = None) -> Template:
    """Parse a SAM/CloudFormation YAML template (template.yaml of the repo by default)."""
    template_path = (path or TEMPLATE_PATH).resolve()
    try:
        text = template_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read template {template_path}: {exc}") from exc
    try:
        body = yaml.load(text, Loader=_CfnLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise TemplateError(f"{template_path} is not valid YAML: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("Resources"), dict):
        raise TemplateError(f"{template_path} has no Resources mapping")
    return Template(path=template_path, body=body)


# ------------------------------------------------------------------------------------ model


def _is_intrinsic(value: Any) -> bool:
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return isinstance(key, str) and (key in {"Ref", "Condition"} or key.startswith("Fn::"))
    return False


def merge_globals(global_value: Any, local_value: Any, key: str = "") -> Any:
    """SAM's Globals rules: maps merge, lists concatenate, anything else the local value wins."""
    if isinstance(global_value, dict) and isinstance(local_value, dict):
        if _is_intrinsic(global_value) or _is_intrinsic(local_value):
            return local_value
        merged = dict(global_value)
        for name, value in local_value.items():
            merged[name] = merge_globals(merged[name], value, name) if name in merged else value
        return merged
    if isinstance(global_value, list) and isinstance(local_value, list):
        return local_value if key in _REPLACED_LISTS else [*global_value, *local_value]
    return local_value


@dataclass(frozen=True)
class FunctionSpec:
    """An ``AWS::Serverless::Function`` with ``Globals.Function`` applied."""

    logical_id: str
    code_uri: Path
    handler: str
    runtime: str
    timeout: int
    memory_size: int
    environment: dict[str, Any]
    layers: list[Any]
    events: dict[str, dict[str, Any]]
    # Beyond the emulator's needs, for checks on the template; defaulted so tests can build specs.
    architectures: list[Any] = field(default_factory=lambda: list(_DEFAULT_ARCHITECTURES))
    properties: dict[str, Any] = field(default_factory=dict)  # all merged properties, unresolved


@dataclass(frozen=True)
class Template:
    """A parsed template; intrinsics are in long form and left unresolved."""

    path: Path
    body: dict[str, Any]

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return cast("dict[str, dict[str, Any]]", self.body.get("Resources") or {})

    def of_type(self, type_: str) -> dict[str, dict[str, Any]]:
        """Resources of one type, by logical id."""
        return {
            logical_id: resource
            for logical_id, resource in self.resources.items()
            if resource.get("Type") == type_
        }

    def parameter_defaults(self) -> dict[str, Any]:
        parameters: dict[str, dict[str, Any]] = self.body.get("Parameters") or {}
        return {
            name: spec["Default"]
            for name, spec in parameters.items()
            if isinstance(spec, dict) and "Default" in spec
        }

    def with_parameters(self, overrides: Mapping[str, str]) -> Template:
        """This template with other values for some parameters (as ``sam deploy
        --parameter-overrides`` gives them): their defaults become these values."""
        parameters: dict[str, Any] = dict(self.body.get("Parameters") or {})
        if unknown := sorted(set(overrides) - set(parameters)):
            raise TemplateError(f"no such parameter(s) in the template: {', '.join(unknown)}")
        for name, value in overrides.items():
            parameters[name] = {**parameters[name], "Default": value}
        return Template(self.path, {**self.body, "Parameters": parameters})

    def functions(self) -> list[FunctionSpec]:
        return [
            self._function_spec(logical_id, resource)
            for logical_id, resource in self.of_type("AWS::Serverless::Function").items()
        ]

    def function(self, logical_id: str) -> FunctionSpec:
        resource = self.of_type("AWS::Serverless::Function").get(logical_id)
        if resource is None:
            known = ", ".join(sorted(self.of_type("AWS::Serverless::Function"))) or "none"
            raise TemplateError(
                f"no AWS::Serverless::Function {logical_id!r} in {self.path} (functions: {known})"
            )
        return self._function_spec(logical_id, resource)

    def _function_spec(self, logical_id: str, resource: dict[str, Any]) -> FunctionSpec:
        globals_: dict[str, Any] = (self.body.get("Globals") or {}).get("Function") or {}
        properties = cast(
            "dict[str, Any]", merge_globals(globals_, resource.get("Properties") or {})
        )

        def required(name: str) -> str:
            value = properties.get(name)
            if not isinstance(value, str) or not value:
                raise TemplateError(f"{logical_id}: {name} must be a string, got {value!r}")
            return value

        code_uri = properties.get("CodeUri")
        if not isinstance(code_uri, str) or code_uri.startswith("s3://"):
            raise TemplateError(f"{logical_id}: CodeUri must be a local folder, got {code_uri!r}")
        environment = properties.get("Environment") or {}
        return FunctionSpec(
            logical_id=logical_id,
            code_uri=(self.path.parent / code_uri).resolve(),
            handler=required("Handler"),
            runtime=required("Runtime"),
            timeout=self._integer(logical_id, properties, "Timeout", _DEFAULT_TIMEOUT),
            memory_size=self._integer(logical_id, properties, "MemorySize", _DEFAULT_MEMORY_SIZE),
            environment=dict(environment.get("Variables") or {}),
            layers=list(properties.get("Layers") or []),
            events=dict(properties.get("Events") or {}),
            architectures=list(properties.get("Architectures") or _DEFAULT_ARCHITECTURES),
            properties=properties,
        )

    def _integer(
        self, logical_id: str, properties: Mapping[str, Any], name: str, default: int
    ) -> int:
        value = properties.get(name, default)
        if isinstance(value, dict) and set(value) == {"Ref"}:
            # A parameter: the local value is its default.
            value = self.parameter_defaults().get(value["Ref"])
        try:
            return int(value)
        except (TypeError, ValueError):
            raise TemplateError(
                f"{logical_id}: {name} must be an integer or a parameter with a default, "
                f"got {properties.get(name)!r}"
            ) from None


# ------------------------------------------------------------------------------------ resolving


class Resolver:
    """Resolves intrinsics against local values.

    ``refs`` maps a logical id to what ``Ref`` gives (a table name, a queue URL);
    ``attributes`` maps ``"LogicalId.Attribute"`` (e.g. ``"Cache.Endpoint.Address"``) to what
    ``Fn::GetAtt`` gives; ``parameters`` and ``pseudo`` (``"AWS::Region"``, ...) complete ``Ref``;
    ``conditions`` are the template's Conditions, which ``Fn::If`` evaluates with those
    parameters. ``Ref AWS::NoValue`` removes the property (or list item) that holds it, as in
    CloudFormation. Supports Ref, Fn::GetAtt, Fn::Sub, Fn::Join, Fn::Select, Fn::Split,
    Fn::Base64 and Fn::If (conditions: Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition);
    anything else, and any name without a local value, raises ``TemplateError`` naming it.
    """

    def __init__(
        self,
        refs: Mapping[str, Any],
        attributes: Mapping[str, Any],
        parameters: Mapping[str, Any],
        pseudo: Mapping[str, Any],
        conditions: Mapping[str, Any] | None = None,
    ) -> None:
        self._refs = refs
        self._attributes = attributes
        self._parameters = parameters
        self._pseudo = pseudo
        self._conditions = conditions or {}
        self._functions: dict[str, Callable[[Any], Any]] = {
            "Ref": self._ref,
            "Fn::GetAtt": self._get_att,
            "Fn::Sub": self._sub,
            "Fn::Join": self._join,
            "Fn::Select": self._select,
            "Fn::Split": self._split,
            "Fn::Base64": self._base64,
            "Fn::If": self._if,
        }

    def resolve(self, value: Any) -> Any:
        """Return ``value`` with every intrinsic inside it replaced by its local value (None
        for a value that is ``AWS::NoValue`` as a whole)."""
        resolved = self._resolve(value)
        return None if resolved is _NO_VALUE else resolved

    def _resolve(self, value: Any) -> Any:
        if _is_intrinsic(value):
            name, argument = next(iter(value.items()))
            function = self._functions.get(name)
            if function is None:
                raise TemplateError(f"{name} is not supported locally (in {value!r})")
            return function(argument)
        if isinstance(value, dict):
            items = ((key, self._resolve(item)) for key, item in value.items())
            return {key: item for key, item in items if item is not _NO_VALUE}
        if isinstance(value, list):
            return [item for item in map(self._resolve, value) if item is not _NO_VALUE]
        return value

    def condition(self, name: str) -> bool:
        """Whether the template's condition ``name`` holds with these parameters."""
        if name not in self._conditions:
            raise TemplateError(f"no condition {name!r} in the template's Conditions")
        return self._holds(self._conditions[name], name)

    def _holds(self, value: Any, name: str) -> bool:
        if isinstance(value, bool):
            return value
        if _is_intrinsic(value):
            function, argument = next(iter(value.items()))
            if function == "Condition" and isinstance(argument, str):
                return self.condition(argument)
            if function == "Fn::Equals" and isinstance(argument, list) and len(argument) == 2:
                # CloudFormation compares the values as strings (a Number parameter is one).
                left, right = (_as_text(self.resolve(item), name) for item in argument)
                return left == right
            if function == "Fn::Not" and isinstance(argument, list) and len(argument) == 1:
                return not self._holds(argument[0], name)
            if function in {"Fn::And", "Fn::Or"} and isinstance(argument, list):
                outcomes = (self._holds(item, name) for item in argument)
                return all(outcomes) if function == "Fn::And" else any(outcomes)
        raise TemplateError(f"condition {name!r}: cannot evaluate {value!r} locally")

    def _if(self, argument: Any) -> Any:
        if not (isinstance(argument, list) and len(argument) == 3 and isinstance(argument[0], str)):
            raise TemplateError(f"Fn::If needs [Condition, if true, if false], got {argument!r}")
        name, when_true, when_false = argument
        try:
            holds = self.condition(name)
        except TemplateError as exc:
            raise TemplateError(f"Fn::If: {exc}") from None
        return self._resolve(when_true if holds else when_false)

    def _ref(self, argument: Any) -> Any:
        name = self.resolve(argument)
        if not isinstance(name, str):
            raise TemplateError(f"Ref needs a name, got {argument!r}")
        if name == "AWS::NoValue":
            return _NO_VALUE
        for source in (self._pseudo, self._parameters, self._refs):
            if name in source:
                return source[name]
        raise TemplateError(
            f"Ref {name!r}: no local value (not a known resource, parameter or pseudo parameter)"
        )

    def _get_att(self, argument: Any) -> Any:
        parts = self.resolve(_split_get_att(argument))
        if not (
            isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) for p in parts)
        ):
            raise TemplateError(f"Fn::GetAtt needs [LogicalId, Attribute], got {argument!r}")
        return self._attribute(f"{parts[0]}.{parts[1]}")

    def _attribute(self, key: str) -> Any:
        if key not in self._attributes:
            raise TemplateError(f"Fn::GetAtt {key!r}: no local value for this attribute")
        return self._attributes[key]

    def _sub(self, argument: Any) -> str:
        variables: Mapping[str, Any] = {}
        if isinstance(argument, list):
            if len(argument) != 2 or not isinstance(argument[1], dict):
                raise TemplateError(f"Fn::Sub needs a string or [string, variables]: {argument!r}")
            argument, variables = argument[0], argument[1]
        if not isinstance(argument, str):
            raise TemplateError(f"Fn::Sub needs a string, got {argument!r}")

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):  # ${!Literal} is CloudFormation's escape for "${Literal}"
                return "${" + name[1:] + "}"
            if name in variables:
                return _as_text(self.resolve(variables[name]), name)
            if "." in name and not name.startswith("AWS::"):
                return _as_text(self._attribute(name), name)
            return _as_text(self._ref(name), name)

        return _SUB_VARIABLE.sub(substitute, argument)

    def _join(self, argument: Any) -> str:
        resolved = self.resolve(argument)
        if not (isinstance(resolved, list) and len(resolved) == 2):
            raise TemplateError(f"Fn::Join needs [delimiter, [values]], got {argument!r}")
        delimiter, items = resolved
        if not isinstance(delimiter, str) or not isinstance(items, list):
            raise TemplateError(f"Fn::Join needs [delimiter, [values]], got {argument!r}")
        return delimiter.join(_as_text(item, "Fn::Join") for item in items)

    def _select(self, argument: Any) -> Any:
        resolved = self.resolve(argument)
        if not (
            isinstance(resolved, list) and len(resolved) == 2 and isinstance(resolved[1], list)
        ):
            raise TemplateError(f"Fn::Select needs [index, [values]], got {argument!r}")
        index, items = resolved
        try:
            return items[int(index)]
        except (ValueError, TypeError, IndexError):
            raise TemplateError(f"Fn::Select index {index!r} out of {items!r}") from None

    def _split(self, argument: Any) -> list[str]:
        resolved = self.resolve(argument)
        if not (isinstance(resolved, list) and len(resolved) == 2):
            raise TemplateError(f"Fn::Split needs [delimiter, string], got {argument!r}")
        delimiter, text = resolved
        if not isinstance(delimiter, str) or not isinstance(text, str):
            raise TemplateError(f"Fn::Split needs [delimiter, string], got {argument!r}")
        return text.split(delimiter)

    def _base64(self, argument: Any) -> str:
        return base64.b64encode(_as_text(self.resolve(argument), "Fn::Base64").encode()).decode()


class _NoValue:
    """What ``Ref AWS::NoValue`` resolves to: the property or list item that holds it goes."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


_NO_VALUE = _NoValue()


def _as_text(value: Any, name: str) -> str:
    """CloudFormation substitutes strings and numbers only."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TemplateError(f"{name}: cannot put {value!r} into a string")
    return str(value)

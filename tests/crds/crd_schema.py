"""Offline stand-ins for what the API server does with a CRD's openAPIV3Schema.

The API server (a) rejects non-structural schemas, (b) fills `default`s top-down, (c) validates
with OpenAPI v3 value validations, and (d) runs the CEL rules in `x-kubernetes-validations`.
These helpers do the same, minimally, so that examples and invalid instances can be checked
without a cluster: jsonschema (Draft 4, the dialect OpenAPI v3 schemas derive from) for (c) and
cel-python for (d), with a shim for the part of Kubernetes' CEL quantity library the rules use. The
e2e tests check the real thing; these keep the feedback loop fast.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
EXAMPLES_DIR = REPO / "examples"
CRD_FILES = {
    "SentimentModel": CRD_DIR / "sentimentops.io_sentimentmodels.yaml",
    "SentimentRollout": CRD_DIR / "sentimentops.io_sentimentrollouts.yaml",
}

Schema = dict[str, Any]

# Keys of apiextensions.k8s.io/v1 JSONSchemaProps.
JSON_SCHEMA_PROPS_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "default",
        "enum",
        "example",
        "externalDocs",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "multipleOf",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "uniqueItems",
        "maxProperties",
        "minProperties",
        "required",
        "items",
        "properties",
        "additionalProperties",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "nullable",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-validations",
    }
)
# JSONSchemaProps keys a structural schema forbids anywhere (KEP 1002).
FORBIDDEN_KEYS = frozenset(
    {"$ref", "$schema", "id", "definitions", "dependencies", "patternProperties", "additionalItems"}
)
# Inside allOf/anyOf/oneOf/not only value validations may appear: no type, default, description,
# properties' shapes or Kubernetes extensions (the schema's shape must be decided outside them).
STRUCTURE_KEYS = frozenset(
    {
        "type",
        "default",
        "description",
        "title",
        "nullable",
        "additionalProperties",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-validations",
    }
)
TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})
VALIDATION_RULE_KEYS = frozenset(
    {"rule", "message", "messageExpression", "reason", "fieldPath", "optionalOldSelf"}
)
# Root fields the API server itself bounds (they never reach a rule unchecked).
SERVER_BOUNDED = frozenset({("apiVersion",), ("kind",)})
INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]


@dataclass(frozen=True)
class Violation:
    """One reason an instance is invalid: the dotted path of the field and what is wrong with it."""

    path: str
    message: str
    # Which CEL rule held false: its node as schema_nodes names it (joined with '.', e.g.
    # "spec.steps.[].watch.duration") and its text; None for OpenAPI failures and for rules that
    # failed to evaluate.
    rule: tuple[str, str] | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


# --- loading ------------------------------------------------------------------------------------
@cache
def load_crd(kind: str) -> dict[str, Any]:
    """The CRD document for a kind, parsed once."""
    loaded: dict[str, Any] = yaml.safe_load(CRD_FILES[kind].read_text())
    return loaded


def openapi_schema(kind: str) -> Schema:
    """The openAPIV3Schema of the (only) version of a kind's CRD."""
    (version,) = load_crd(kind)["spec"]["versions"]
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


def load_examples() -> list[tuple[Path, dict[str, Any]]]:
    """Every YAML document in examples/, with the file it came from."""
    docs = []
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        docs.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


# --- walking ------------------------------------------------------------------------------------
def dotted(path: tuple[str | int, ...]) -> str:
    """('spec', 'steps', 2, 'watch') -> 'spec.steps[2].watch'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "<root>"


def schema_nodes(schema: Schema, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Schema]]:
    """Every node of a schema that describes a value, with a path naming where it sits."""
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from schema_nodes(prop, (*path, name))
    if isinstance(schema.get("items"), dict):
        yield from schema_nodes(schema["items"], (*path, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from schema_nodes(schema["additionalProperties"], (*path, "{}"))


# --- structural schema --------------------------------------------------------------------------
def structural_problems(schema: Schema) -> list[str]:
    """Why a schema is not structural (empty when it is), in the spirit of the API server's check."""
    problems: list[str] = []
    for path, node in schema_nodes(schema):
        where = ".".join(path) or "<root>"
        problems += [f"{where}: unknown key {key!r}" for key in set(node) - JSON_SCHEMA_PROPS_KEYS]
        problems += [f"{where}: {key!r} is not allowed" for key in set(node) & FORBIDDEN_KEYS]
        problems += _type_problems(where, node)
        for combinator in ("allOf", "anyOf", "oneOf"):
            for branch in node.get(combinator, []):
                problems += _value_validation_problems(where, combinator, node, branch)
        if "not" in node:
            problems += _value_validation_problems(where, "not", node, node["not"])
        problems += _list_map_problems(where, node)
    metadata = schema.get("properties", {}).get("metadata", {})
    if metadata.keys() - {"type", "properties"} or metadata.get("properties", {}).keys() - {
        "name",
        "generateName",
    }:
        problems.append(
            "metadata: at the root only `type: object` and limits on name/generateName may be given"
        )
    return problems


def _type_problems(where: str, node: Schema) -> list[str]:
    open_ended = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in node:
        return [] if open_ended else [f"{where}: has no type"]
    kind = node["type"]
    problems = [] if kind in TYPES else [f"{where}: unknown type {kind!r}"]
    if kind == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{where}: an array needs one `items` schema")
    if kind == "object" and "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    return problems


def _value_validation_problems(where: str, combinator: str, node: Schema, branch: Schema) -> list[str]:
    if (
        combinator == "anyOf"
        and node.get("x-kubernetes-int-or-string")
        and node["anyOf"] == INT_OR_STRING_ANY_OF
    ):
        return []  # the one shape the API server allows types in
    return [f"{where}: {combinator} may not set {key!r}" for key in sorted(set(branch) & STRUCTURE_KEYS)]


def _list_map_problems(where: str, node: Schema) -> list[str]:
    if node.get("x-kubernetes-list-type") != "map":
        return []
    required = set(node.get("items", {}).get("required", []))
    keys = node.get("x-kubernetes-list-map-keys", [])
    return [f"{where}: list-map key {key!r} must be required in items" for key in keys if key not in required]


def unbounded_under_rules(schema: Schema) -> list[str]:
    """Strings and lists that a CEL rule can see but that have no maxLength/maxItems/enum.

    The API server estimates each rule's worst-case cost from these bounds and refuses a CRD
    whose estimate is too high; bounding them keeps every rule cheap.
    """
    problems = []
    for path, node in schema_nodes(schema):
        if "x-kubernetes-validations" not in node:
            continue
        for sub_path, sub in schema_nodes(node, path):
            if sub_path in SERVER_BOUNDED:
                continue
            kind = sub.get("type")
            where = ".".join(sub_path) or "<root>"
            if kind == "string" and not ({"maxLength", "enum", "format"} & sub.keys()):
                problems.append(f"{where}: string without maxLength under a CEL rule")
            if kind == "array" and "maxItems" not in sub:
                problems.append(f"{where}: array without maxItems under a CEL rule")
    return problems


# --- defaulting ---------------------------------------------------------------------------------
def apply_defaults(value: Any, schema: Schema) -> Any:
    """Fill defaults top-down as the API server does: a defaulted object gets its own defaults too."""
    value = copy.deepcopy(value)
    _default_in_place(value, schema)
    return value


def _default_in_place(value: Any, schema: Schema) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name, prop in properties.items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
        extra = schema.get("additionalProperties")
        for name, child in value.items():
            child_schema = properties.get(name, extra if isinstance(extra, dict) else None)
            if child_schema is not None:
                _default_in_place(child, child_schema)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default_in_place(item, schema["items"])


# --- validation ---------------------------------------------------------------------------------
def to_jsonschema(schema: Schema, *, root: bool = True) -> Schema:
    """The Kubernetes dialect translated into Draft-4 JSON Schema, minimally.

    Unknown fields: the API server prunes them, or with strict field validation (kubectl's
    default, `fieldValidation=Strict`) rejects them; here they are rejected, except in the root's
    metadata (ObjectMeta, validated by the server itself). Kubernetes extensions are unknown
    keywords to jsonschema and so ignored; CEL rules are checked apart.
    """
    out = {key: value for key, value in schema.items() if key != "x-kubernetes-validations"}
    properties = out.get("properties", {})
    out["properties"] = {
        name: prop if (root and name == "metadata") else to_jsonschema(prop, root=False)
        for name, prop in properties.items()
    }
    if isinstance(out.get("items"), dict):
        out["items"] = to_jsonschema(out["items"], root=False)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(out["additionalProperties"], root=False)
    elif out.get("type") == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if not properties:
        del out["properties"]
    return out


@cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(
        to_jsonschema(openapi_schema(kind)), format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
    )


def schema_violations(instance: dict[str, Any], kind: str) -> list[Violation]:
    """OpenAPI value-validation failures of an (already defaulted) instance."""
    errors = sorted(_validator(kind).iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    return [Violation(_error_path(error), error.message) for error in errors]


def _error_path(error: jsonschema.ValidationError) -> str:
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        unknown = sorted(set(error.instance) - set(allowed))
        path = (*path, *unknown[:1])  # name the unknown field itself, as the API server does
    if error.validator == "required":
        missing = str(error.message).split("'")[1]
        path = (*path, missing)
    return dotted(path)


def cel_violations(
    instance: Any, schema: Schema, path: tuple[str | int, ...] = (), at: tuple[str, ...] = ()
) -> list[Violation]:
    """Failures of the CEL rules (x-kubernetes-validations) of a defaulted instance, top-down.

    `path` names the instance's place (list indexes, map keys); `at` names its schema node as
    schema_nodes does ('[]' for a list's items, '{}' for a map's values).
    """
    violations = [
        violation
        for rule in schema.get("x-kubernetes-validations", [])
        if (violation := _rule_violation(rule, instance, path, at)) is not None
    ]
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, child in instance.items():
            if name in properties:
                violations += cel_violations(child, properties[name], (*path, name), (*at, name))
            elif isinstance(extra, dict):
                violations += cel_violations(child, extra, (*path, name), (*at, "{}"))
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(instance):
            violations += cel_violations(item, schema["items"], (*path, index), (*at, "[]"))
    return violations


def _rule_violation(
    rule: dict[str, Any], value: Any, path: tuple[str | int, ...], at: tuple[str, ...]
) -> Violation | None:
    where = dotted((*path, *_field_path(rule)))
    activation = {"self": celpy.json_to_cel(value)}
    try:
        holds = compile_cel(rule["rule"]).evaluate(activation)
    except celpy.CELEvalError as error:  # the API server reports evaluation errors as invalid too
        holds = error
    if isinstance(holds, celpy.CELEvalError):
        return Violation(where, f"rule {rule['rule']!r} failed to evaluate: {holds}")
    if bool(holds):
        return None
    if "messageExpression" in rule:
        message = str(compile_cel(rule["messageExpression"]).evaluate(activation))
    else:
        message = str(rule.get("message", f"failed rule: {rule['rule']}"))
    return Violation(where, message, rule=(".".join(at), rule["rule"]))


def _field_path(rule: dict[str, Any]) -> tuple[str, ...]:
    return tuple(part for part in rule.get("fieldPath", "").split(".") if part)


# --- Kubernetes' CEL quantity library (k8s.io/apiserver/pkg/cel/library/quantity.go), minimally ----
# cel-python lacks it. Without these functions a rule that uses one fails to evaluate, which reports
# every instance invalid: a missing function shows as a failing test, never as a rule skipped. Only
# what the 1.37 API server compiles in a CRD rule is here (it has no Quantity.sign(), for one).
# The grammar of resource.ParseQuantity: a signed decimal, then a binary (Ki..Ei) or decimal SI
# suffix (n..E) or a decimal exponent (e3, E-2).
_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<binary>[KMGTPE]i)|(?P<si>[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_SI_EXPONENT = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


@dataclass(frozen=True)
class Quantity:
    """A Kubernetes resource.Quantity as the exact rational number it stands for."""

    value: Fraction
    # The power of ten Kubernetes keeps the parsed digits at: the suffix's exponent (0 for a
    # binary suffix) less the digits after the point; "2000m" is 2000 at -3, not 2 at 0.
    scale: int = field(default=0, compare=False)


def parse_quantity(text: str) -> Quantity:
    """`text` as Kubernetes parses a quantity; ValueError (a CEL evaluation error) when it is none."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    value = Fraction(match["number"])
    exponent = 0
    if match["binary"]:
        value *= _BINARY[match["binary"]]
    elif match["si"] or match["exponent"]:
        exponent = _SI_EXPONENT[match["si"]] if match["si"] else int(match["exponent"])
        value *= Fraction(10) ** exponent
    fraction_digits = len(match["number"].partition(".")[2])
    return Quantity(-value if match["sign"] == "-" else value, exponent - fraction_digits)


def _is_quantity(text: str) -> celpy.celtypes.BoolType:
    return celpy.celtypes.BoolType(_QUANTITY.fullmatch(text) is not None)


def _is_integer(quantity: Quantity) -> celpy.celtypes.BoolType:
    """Quantity.isInteger(): whether asInteger() succeeds. Kubernetes answers from the parsed
    scale, without reducing it: "2000m" and "1.0" are not integers there, "1k" and "1Gi" are."""
    fits = -(2**63) <= quantity.value < 2**63
    return celpy.celtypes.BoolType(quantity.scale >= 0 and fits)


def _compare(left: Quantity, right: Quantity) -> celpy.celtypes.IntType:
    return celpy.celtypes.IntType((left.value > right.value) - (left.value < right.value))


KUBERNETES_CEL_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quantity": parse_quantity,
    "isQuantity": _is_quantity,
    "compareTo": _compare,
    "isInteger": _is_integer,
    "isLessThan": lambda left, right: celpy.celtypes.BoolType(left.value < right.value),
    "isGreaterThan": lambda left, right: celpy.celtypes.BoolType(left.value > right.value),
}


@cache
def compile_cel(expression: str) -> celpy.Runner:
    """A compiled CEL program (raises celpy.CELParseError on a syntax error)."""
    env = celpy.Environment()
    return env.program(env.compile(expression), functions=KUBERNETES_CEL_FUNCTIONS)


def violations(instance: dict[str, Any], kind: str) -> list[Violation]:
    """Everything the API server would reject in an instance of `kind`, after defaulting it."""
    schema = openapi_schema(kind)
    defaulted = apply_defaults(instance, schema)
    found = schema_violations(defaulted, kind)
    # The API server runs CEL rules only on values that are well-typed; so do we.
    return found or cel_violations(defaulted, schema)

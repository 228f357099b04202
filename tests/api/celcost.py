"""kube-apiserver's static cost estimate of a CRD's CEL rules, ported to Python for tests.

The API server refuses a CustomResourceDefinition when one x-kubernetes-validations rule's estimated
worst-case cost, multiplied by how many times the rule can run in one object (its cardinality), is
over StaticEstimatedCostLimit, or when the sum over all rules is over StaticEstimatedCRDCostLimit.
The estimate is cel-go's, fed with sizes the API server derives from the schema's maxItems, maxLength
and maxProperties, or, where a bound is missing, from how many items fit into a 3 MiB request.

Ported, for the CEL the kubetune CRD uses (field selection, has(), all/exists/exists_one, ==, !=,
<..>=, +, in, size, matches, contains, startsWith, endsWith, &&, ||, !, ?:, [], arithmetic), from:

- github.com/google/cel-go checker/cost.go: the coster (costs of literals, identifiers, selections,
  calls, list and map literals and comprehensions; the size-dependent functions; field paths that
  carry schema sizes into iteration variables), common/cost.go (its constants), parser/macro.go
  (has, all, exists and exists_one expanded into comprehensions);
- github.com/kubernetes/kubernetes staging/src/k8s.io/apiserver/pkg/cel/common/schemas.go
  (SchemaDeclType: MaxElements and MinSerializedSize of each schema node: maxLength x 4 bytes per
  character, enum strings as long as their longest value, unbounded strings, lists and maps from the
  request size), pkg/cel/types.go and pkg/cel/limits.go (sizes of the scalar types),
  pkg/cel/environment/base.go (has() costs nothing: PresenceTestHasCost(false)),
  pkg/cel/library/cost.go (the Kubernetes library's estimator: it prices none of the functions
  above, so a function this port does not know is refused rather than guessed);
- staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel/compilation.go (sizeEstimator:
  sizes looked up by field path; maxCardinality) and pkg/apis/apiextensions/validation/validation.go
  and cel_validation.go (the two limits, a rule's cost times the cardinality of the node it sits on,
  the per-CRD total and the error messages).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lark
from celpy.celparser import CELParser
from celpy.evaluation import celbytes, celstr

# apiextensions validation.go
STATIC_ESTIMATED_COST_LIMIT = 10_000_000
STATIC_ESTIMATED_CRD_COST_LIMIT = 100_000_000

# apiserver pkg/cel/limits.go
MAX_REQUEST_SIZE_BYTES = 3 * 1024 * 1024
MAX_DURATION_SIZE_JSON = 32
MAX_DATETIME_SIZE_JSON = 32
MIN_DURATION_SIZE_JSON = 3
JSON_DATE_SIZE = 12
MIN_DATETIME_SIZE_JSON = 21
MIN_STRING_SIZE = 2
MIN_BOOL_SIZE = 4
MIN_NUMBER_SIZE = 1

# cel-go common/cost.go
SELECT_AND_IDENT_COST = 1
CONST_COST = 0
LIST_CREATE_BASE_COST = 10
MAP_CREATE_BASE_COST = 30
STRING_TRAVERSAL_COST_FACTOR = 0.1
REGEX_STRING_LENGTH_COST_FACTOR = 0.25

MAX_UINT64 = 2**64 - 1
# environment/base.go: CostEstimatorOptions(checker.PresenceTestHasCost(false))
PRESENCE_TEST_COST = 0
ACCUMULATOR = "__result__"


class UnsupportedCel(ValueError):
    """A rule uses CEL this port does not estimate (or that would not compile on the API server)."""


# --------------------------------------------------------------------------- saturating arithmetic


def _add(x: int, y: int) -> int:
    return min(x + y, MAX_UINT64)


def _multiply(x: int, y: int) -> int:
    return min(x * y, MAX_UINT64)


def _multiply_by_factor(x: int, factor: float) -> int:
    """cel-go multiplyByCostFactor: float product rounded up, saturating at MaxUint64."""
    x_float = float(x)
    if x_float > 0 and factor > 0 and x_float > float(MAX_UINT64) / factor:
        return MAX_UINT64
    ceil = math.ceil(x_float * factor)
    return MAX_UINT64 if ceil >= 2**64 else int(ceil)


@dataclass(frozen=True)
class Estimate:
    """cel-go's SizeEstimate and CostEstimate (the same arithmetic on a min..max range)."""

    min: int
    max: int

    def add(self, other: Estimate) -> Estimate:
        return Estimate(_add(self.min, other.min), _add(self.max, other.max))

    def multiply(self, other: Estimate) -> Estimate:
        return Estimate(_multiply(self.min, other.min), _multiply(self.max, other.max))

    def times_factor(self, factor: float) -> Estimate:
        return Estimate(_multiply_by_factor(self.min, factor), _multiply_by_factor(self.max, factor))

    def union(self, other: Estimate) -> Estimate:
        return Estimate(min(self.min, other.min), max(self.max, other.max))


def fixed(n: int) -> Estimate:
    return Estimate(n, n)


UNKNOWN = Estimate(0, MAX_UINT64)


# --------------------------------------------------------------------------- schema -> CEL types


@dataclass(eq=False)
class DeclType:
    """apiserver pkg/cel types.go DeclType: the CEL type of a schema node and its size bounds."""

    kind: str  # object | list | map | string | bytes | bool | int | uint | double | null | dyn | timestamp | duration
    max_elements: int = 0
    min_serialized_size: int = 0
    fields: dict[str, DeclType] = field(default_factory=dict)
    elem: DeclType | None = None
    key: DeclType | None = None


def _scalar(kind: str, min_size: int) -> DeclType:
    return DeclType(kind, min_serialized_size=min_size)


BOOL = _scalar("bool", MIN_BOOL_SIZE)
INT = _scalar("int", MIN_NUMBER_SIZE)
UINT = _scalar("uint", 1)
DOUBLE = _scalar("double", MIN_NUMBER_SIZE)
STRING = _scalar("string", MIN_STRING_SIZE)
BYTES = _scalar("bytes", MIN_STRING_SIZE)
NULL = _scalar("null", 4)
DYN = _scalar("dyn", 1)


def _with_type_and_object_meta(schema: dict) -> dict:
    """apiVersion, kind, metadata.name and metadata.generateName are always visible at a resource root."""
    props = schema.get("properties") or {}
    meta = props.get("metadata") or {}
    meta_props = meta.get("properties") or {}
    if (
        props.get("kind", {}).get("type") == "string"
        and props.get("apiVersion", {}).get("type") == "string"
        and meta.get("type") == "object"
        and meta_props.get("name", {}).get("type") == "string"
        and meta_props.get("generateName", {}).get("type") == "string"
    ):
        return schema
    string = {"type": "string"}
    meta = {"type": "object", "properties": {"name": string, "generateName": string}}
    return dict(schema, properties=dict(props, kind=string, apiVersion=string, metadata=meta))


def _max_string_length_per_request(schema: dict) -> int:
    if schema.get("x-kubernetes-int-or-string"):
        return MAX_REQUEST_SIZE_BYTES - 2
    return {"duration": MAX_DURATION_SIZE_JSON, "date": JSON_DATE_SIZE, "date-time": MAX_DATETIME_SIZE_JSON}.get(
        schema.get("format", ""), MAX_REQUEST_SIZE_BYTES - 2
    )


def schema_decl_type(schema: dict | None, is_resource_root: bool = False) -> DeclType | None:
    """schemas.go SchemaDeclType; None where the node is not visible to CEL."""
    if schema is None:
        return None
    if schema.get("x-kubernetes-int-or-string"):
        dyn = DeclType("dyn", min_serialized_size=1)
        if "maxLength" in schema:
            dyn.max_elements = max(schema["maxLength"], 0) * 4
        else:
            dyn.max_elements = _max_string_length_per_request(schema)
        return dyn
    if is_resource_root:
        schema = _with_type_and_object_meta(schema)
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        item_type = schema_decl_type(items, bool(items and items.get("x-kubernetes-embedded-resource")))
        if item_type is None:
            return None
        if "maxItems" in schema:
            max_items = max(schema["maxItems"], 0)
        else:  # [ and ], then one comma per item
            max_items = (MAX_REQUEST_SIZE_BYTES - 2) // (item_type.min_serialized_size + 1)
        return DeclType("list", max_items, 2, elem=item_type)
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            value_type = schema_decl_type(extra, bool(extra.get("x-kubernetes-embedded-resource")))
            if value_type is None:
                return None
            if "maxProperties" in schema:
                max_props = max(schema["maxProperties"], 0)
            else:  # "": plus colon and comma around the smallest value, inside { and }
                max_props = (MAX_REQUEST_SIZE_BYTES - 2) // (value_type.min_serialized_size + 6)
            return DeclType("map", max_props, 2, elem=value_type, key=STRING)
        required = set(schema.get("required") or ())
        fields = {}
        min_size = 2  # {}
        for name, prop in (schema.get("properties") or {}).items():
            field_type = schema_decl_type(prop, bool(prop.get("x-kubernetes-embedded-resource")))
            if field_type is None:
                continue
            fields[name] = field_type
            if name in required and "default" not in prop:
                min_size += len(name) + field_type.min_serialized_size + 4
        return DeclType("object", 0, min_size, fields=fields)
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "byte":
            limit = max(schema["maxLength"], 0) if "maxLength" in schema else _max_string_length_per_request(schema)
            return DeclType("bytes", limit, MIN_STRING_SIZE)
        if fmt == "duration":
            return DeclType("duration", _max_string_length_per_request(schema), MIN_DURATION_SIZE_JSON)
        if fmt == "date":
            return DeclType("timestamp", _max_string_length_per_request(schema), JSON_DATE_SIZE)
        if fmt == "date-time":
            return DeclType("timestamp", _max_string_length_per_request(schema), MIN_DATETIME_SIZE_JSON)
        if "maxLength" in schema:  # maxLength counts characters; a character is up to 4 bytes
            limit = max(schema["maxLength"], 0) * 4
        elif schema.get("enum"):
            limit = max((len(v.encode()) for v in schema["enum"] if isinstance(v, str)), default=0)
        else:
            limit = _max_string_length_per_request(schema)
        return DeclType("string", limit, MIN_STRING_SIZE)
    return {"boolean": BOOL, "number": DOUBLE, "integer": INT}.get(kind)


def max_cardinality(min_serialized_size: int) -> int:
    """compilation.go maxCardinality: how often data of this size fits into one request."""
    return MAX_REQUEST_SIZE_BYTES // (min_serialized_size + 1)


# --------------------------------------------------------------------------- CEL syntax


class Expr:
    """A node of the parsed, macro-expanded expression (cel-go ast.Expr); hashed by identity."""


@dataclass(eq=False)
class Literal(Expr):
    value: Any
    type: DeclType


@dataclass(eq=False)
class Ident(Expr):
    name: str


@dataclass(eq=False)
class Select(Expr):
    operand: Expr
    field: str
    test_only: bool = False


@dataclass(eq=False)
class Call(Expr):
    function: str
    args: list[Expr]
    target: Expr | None = None


@dataclass(eq=False)
class CreateList(Expr):
    elements: list[Expr]


@dataclass(eq=False)
class CreateMap(Expr):
    entries: list[tuple[Expr, Expr]]


@dataclass(eq=False)
class Comprehension(Expr):
    iter_range: Expr
    iter_var: str
    accu_var: str
    accu_init: Expr
    loop_condition: Expr
    loop_step: Expr
    result: Expr


_BINARY = {
    "relation_lt": "_<_", "relation_le": "_<=_", "relation_gt": "_>_", "relation_ge": "_>=_",
    "relation_eq": "_==_", "relation_ne": "_!=_", "relation_in": "@in",
    "addition_add": "_+_", "addition_sub": "_-_",
    "multiplication_mul": "_*_", "multiplication_div": "_/_", "multiplication_mod": "_%_",
}  # fmt: skip


def _quantifier(kind: str, target: Expr, args: list[Expr]) -> Expr:
    """parser/macro.go makeQuantifier."""
    if len(args) != 2 or not isinstance(args[0], Ident):
        raise UnsupportedCel(f"{kind}() needs a variable name and a predicate")
    var, predicate = args[0].name, args[1]
    accu = lambda: Ident(ACCUMULATOR)  # noqa: E731
    if kind == "all":
        init, condition = Literal(True, BOOL), Call("@not_strictly_false", [accu()])
        step, result = Call("_&&_", [accu(), predicate]), accu()
    elif kind == "exists":
        init, condition = Literal(False, BOOL), Call("@not_strictly_false", [Call("!_", [accu()])])
        step, result = Call("_||_", [accu(), predicate]), accu()
    else:  # exists_one
        init, condition = Literal(0, INT), Literal(True, BOOL)
        step = Call("_?_:_", [predicate, Call("_+_", [accu(), Literal(1, INT)]), accu()])
        result = Call("_==_", [accu(), Literal(1, INT)])
    return Comprehension(target, var, ACCUMULATOR, init, condition, step, result)


def _literal(token: lark.Token) -> Literal:
    kind, text = token.type, token.value
    if kind in ("STRING_LIT", "MLSTRING_LIT"):
        return Literal(str(celstr(token)), STRING)
    if kind == "BYTES_LIT":
        return Literal(bytes(celbytes(token)), BYTES)
    if kind == "BOOL_LIT":
        return Literal(text == "true", BOOL)
    if kind == "NULL_LIT":
        return Literal(None, NULL)
    if kind == "UINT_LIT":
        return Literal(int(text[:-1], 0), UINT)
    if kind == "INT_LIT":
        return Literal(int(text, 0), INT)
    return Literal(float(text), DOUBLE)


def _build(tree: lark.Tree | lark.Token) -> Expr:
    kids = [c for c in tree.children if c is not None]
    rule = tree.data
    if rule in ("expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication"):
        if len(kids) == 1:
            return _build(kids[0])
        if rule == "expr":
            return Call("_?_:_", [_build(k) for k in kids])
        if rule in ("conditionalor", "conditionaland"):
            return Call("_||_" if rule == "conditionalor" else "_&&_", [_build(kids[0]), _build(kids[1])])
        operator = kids[0]
        return Call(_BINARY[operator.data], [_build(operator.children[0]), _build(kids[1])])
    if rule == "unary":
        if len(kids) == 1:
            return _build(kids[0])
        return Call("!_" if kids[0].data == "unary_not" else "-_", [_build(kids[1])])
    if rule in ("member", "primary", "paren_expr"):
        return _build(kids[0])
    if rule == "member_dot":
        return Select(_build(kids[0]), str(kids[1]))
    if rule == "member_dot_arg":
        target, name = _build(kids[0]), str(kids[1])
        args = [_build(e) for e in kids[2].children] if len(kids) > 2 else []
        if name in ("all", "exists", "exists_one"):
            return _quantifier(name, target, args)
        if name in ("map", "filter", "existsOne", "transformList", "transformMap"):
            raise UnsupportedCel(f"macro {name}() is not ported")
        return Call(name, args, target)
    if rule == "member_index":
        return Call("_[_]", [_build(kids[0]), _build(kids[1])])
    if rule == "ident":
        return Ident(str(kids[0]))
    if rule == "ident_arg":
        name = str(kids[0])
        args = [_build(e) for e in kids[1].children] if len(kids) > 1 else []
        if name == "has":
            if len(args) != 1 or not isinstance(args[0], Select):
                raise UnsupportedCel("invalid argument to has() macro")
            return Select(args[0].operand, args[0].field, test_only=True)
        return Call(name, args)
    if rule == "list_lit":
        return CreateList([_build(e) for e in kids[0].children] if kids else [])
    if rule == "map_lit":
        inits = [_build(e) for e in kids[0].children] if kids else []
        return CreateMap(list(zip(inits[::2], inits[1::2], strict=True)))
    if rule == "literal":
        return _literal(kids[0])
    raise UnsupportedCel(f"CEL syntax {rule!r} is not ported")


_PARSER = CELParser()


def parse(text: str) -> Expr:
    return _build(_PARSER.parse(text))


# --------------------------------------------------------------------------- type checking


# Size-dependent overloads (cel-go overloads.go names); every other overload is priced as O(1).
_RELATIONS = {"_<_": "less", "_<=_": "less_equals", "_>_": "greater", "_>=_": "greater_equals"}
_ARITHMETIC = {"_-_": "subtract", "_*_": "multiply", "_/_": "divide", "_%_": "modulo", "-_": "negate"}
_STRING_MEMBERS = {"contains": "contains_string", "startsWith": "starts_with_string", "endsWith": "ends_with_string",
                   "matches": "matches_string"}  # fmt: skip
# ==, != and the string and bytes orderings cost a traversal of the shorter operand
_SIZED_COMPARISONS = {"equals", "not_equals"} | {f"{r}_{t}" for r in _RELATIONS.values() for t in ("string", "bytes")}
_CONVERSIONS = {"int": INT, "uint": UINT, "double": DOUBLE, "string": STRING, "bool": BOOL, "bytes": BYTES}


class Checker:
    """The part of cel-go's type checker the coster reads: each node's type and overload ids."""

    def __init__(self, variables: dict[str, DeclType]):
        self.scopes: list[dict[str, DeclType]] = [dict(variables)]
        self.types: dict[Expr, DeclType] = {}
        self.overloads: dict[Expr, list[str]] = {}

    def _lookup(self, name: str) -> DeclType:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise UnsupportedCel(f"undeclared reference to {name!r}")

    def check(self, e: Expr) -> DeclType:
        t = self._check(e)
        self.types[e] = t
        return t

    def _check(self, e: Expr) -> DeclType:
        if isinstance(e, Literal):
            return e.type
        if isinstance(e, Ident):
            return self._lookup(e.name)
        if isinstance(e, Select):
            operand = self.check(e.operand)
            if operand.kind == "object":
                if e.field not in operand.fields:
                    raise UnsupportedCel(f"undefined field {e.field!r}")
                return BOOL if e.test_only else operand.fields[e.field]
            if operand.kind == "map":
                return BOOL if e.test_only else operand.elem
            if operand.kind == "dyn":
                return BOOL if e.test_only else DYN
            raise UnsupportedCel(f"cannot select {e.field!r} from a {operand.kind}")
        if isinstance(e, CreateList):
            elems = [self.check(x) for x in e.elements]
            return DeclType("list", elem=elems[0] if elems else DYN)
        if isinstance(e, CreateMap):
            keys = [self.check(k) for k, _ in e.entries]
            values = [self.check(v) for _, v in e.entries]
            return DeclType("map", key=keys[0] if keys else DYN, elem=values[0] if values else DYN)
        if isinstance(e, Comprehension):
            over = self.check(e.iter_range)
            iter_type = {"list": over.elem, "map": over.key}.get(over.kind, DYN)
            self.scopes.append({e.accu_var: self.check(e.accu_init)})
            self.scopes.append({e.iter_var: iter_type})
            self.check(e.loop_condition)
            self.check(e.loop_step)
            self.scopes.pop()
            result = self.check(e.result)
            self.scopes.pop()
            return result
        assert isinstance(e, Call)
        return self._check_call(e)

    def _check_call(self, e: Call) -> DeclType:
        args = [self.check(a) for a in e.args]
        target = self.check(e.target) if e.target is not None else None
        fn = e.function
        kinds = [a.kind for a in args]

        def overload(*ids: str) -> None:
            self.overloads[e] = list(ids)

        if fn in ("_&&_", "_||_", "!_", "@not_strictly_false"):
            overload({"_&&_": "logical_and", "_||_": "logical_or", "!_": "logical_not"}.get(fn, "not_strictly_false"))
            return BOOL
        if fn in ("_==_", "_!=_"):
            overload("equals" if fn == "_==_" else "not_equals")
            return BOOL
        if fn in _RELATIONS:
            suffix = {"string": "string", "bytes": "bytes"}.get(kinds[0], kinds[0])
            overload(f"{_RELATIONS[fn]}_{suffix}")
            return BOOL
        if fn == "_+_":
            if "dyn" in kinds:
                raise UnsupportedCel("+ on a dyn value (int-or-string) is not ported")
            sized = {"string": "add_string", "bytes": "add_bytes", "list": "add_list"}
            overload(sized.get(kinds[0], f"add_{kinds[0]}"))
            return args[0]
        if fn in _ARITHMETIC:
            overload(f"{_ARITHMETIC[fn]}_{kinds[0]}")
            return args[0]
        if fn == "@in":
            container = args[1].kind
            if container not in ("list", "map"):
                raise UnsupportedCel(f"'in' over a {container}")
            overload(f"in_{container}")
            return BOOL
        if fn == "_?_:_":
            overload("conditional")
            return args[1]
        if fn == "_[_]":
            container = args[0]
            if container.kind == "list":
                overload("index_list")
            elif container.kind == "map":
                overload("index_map")
            else:
                raise UnsupportedCel(f"index into a {container.kind}")
            return container.elem
        if fn == "size":
            subject = target if target is not None else args[0]
            overload(f"size_{subject.kind}")
            return INT
        if fn in _STRING_MEMBERS and target is not None and target.kind == "string":
            overload(_STRING_MEMBERS[fn])
            return BOOL
        if fn == "matches" and target is None:
            overload("matches")  # the global form, which cel-go prices as O(1)
            return BOOL
        if fn in _CONVERSIONS and target is None and len(args) == 1:
            overload(f"{fn}_from_{kinds[0]}")
            return _CONVERSIONS[fn]
        if fn == "dyn" and target is None and len(args) == 1:
            overload("to_dyn")
            return DYN
        raise UnsupportedCel(f"function {fn}() is not ported to the cost estimate")


# --------------------------------------------------------------------------- the coster (cel-go checker/cost.go)


@dataclass
class _EntrySize:
    container: str  # list | map
    key: Estimate
    val: Estimate

    def union(self, other: _EntrySize | None) -> _EntrySize | None:
        if other is None:
            return None
        return _EntrySize(self.container, self.key.union(other.key), self.val.union(other.val))


@dataclass
class _LocalVar:
    path: list[str]
    size: Estimate | None
    entry_size: _EntrySize | None


@dataclass
class _AstNode:
    path: list[str] | None
    type: DeclType
    expr: Expr | None
    computed_size: Estimate | None


class _SizeEstimator:
    """compilation.go sizeEstimator: the MaxElements of the schema node a field path leads to."""

    def __init__(self, root: DeclType):
        self.root = root

    def estimate_size(self, path: list[str] | None) -> Estimate | None:
        if not path:
            return None
        node = self.root
        for name in path[1:]:  # path[0] is self (or oldSelf)
            if name in ("@items", "@values"):
                node = node.elem
            elif name == "@keys":
                node = node.key
            else:
                node = node.fields.get(name) if node.kind == "object" else None
            if node is None:
                return None
        return Estimate(0, node.max_elements)


class Coster:
    def __init__(self, checker: Checker, estimator: _SizeEstimator):
        self.checker = checker
        self.estimator = estimator
        self.paths: dict[Expr, list[str]] = {}
        self.local_vars: dict[str, list[_LocalVar]] = {}
        self.sizes: dict[Expr, Estimate] = {}
        self.entry_sizes: dict[Expr, _EntrySize] = {}

    # -- bookkeeping
    def _type(self, e: Expr) -> DeclType:
        return self.checker.types[e]

    def _peek(self, name: str) -> _LocalVar | None:
        stack = self.local_vars.get(name)
        return stack[-1] if stack else None

    def _push(self, name: str, var: _LocalVar) -> None:
        self.local_vars.setdefault(name, []).append(var)

    def _pop(self, name: str) -> None:
        self.local_vars[name].pop()

    def _path(self, e: Expr) -> list[str]:
        if isinstance(e, Ident):
            var = self._peek(e.name)
            if var is not None:
                return list(var.path)
        return list(self.paths.get(e, []))

    def _node(self, e: Expr) -> _AstNode:
        path: list[str] | None = self._path(e)
        if path and path[0] in (ACCUMULATOR, "@result"):
            path = None
        return _AstNode(path, self._type(e), e, self.compute_size(e))

    def _set_size(self, e: Expr, size: Estimate | None) -> None:
        if size is not None:
            self.sizes[e] = size

    def _set_entry_size(self, e: Expr, size: _EntrySize | None) -> None:
        if size is not None:
            self.entry_sizes[e] = size

    def _entry_size(self, e: Expr) -> _EntrySize | None:
        if e in self.entry_sizes:
            return self.entry_sizes[e]
        if isinstance(e, Ident):
            var = self._peek(e.name)
            if var is not None and var.entry_size is not None:
                return var.entry_size
        return None

    def compute_size(self, e: Expr) -> Estimate | None:
        if e in self.sizes:
            return self.sizes[e]
        if isinstance(e, Literal):
            if isinstance(e.value, str):
                return fixed(len(e.value))  # runes
            if isinstance(e.value, bytes):
                return fixed(len(e.value))
            return fixed(1)
        if isinstance(e, CreateList):
            return fixed(len(e.elements))
        if isinstance(e, CreateMap):
            return fixed(len(e.entries))
        size = self.estimator.estimate_size(self._path(e))
        if size is not None:
            self.sizes[e] = size
            return size
        if self._type(e).kind in ("bool", "double", "duration", "int", "timestamp", "uint"):
            return fixed(1)
        if isinstance(e, Ident):
            var = self._peek(e.name)
            if var is not None and var.size is not None:
                return var.size
        return None

    def _size_or_unknown(self, node: Expr | _AstNode) -> Estimate:
        size = node.computed_size if isinstance(node, _AstNode) else self.compute_size(node)
        return size if size is not None else UNKNOWN

    # -- costs
    def cost(self, e: Expr) -> Estimate:
        if isinstance(e, Literal):
            return fixed(CONST_COST)
        if isinstance(e, Ident):
            var = self._peek(e.name)
            self.paths[e] = list(var.path) if var is not None else [e.name]
            return fixed(SELECT_AND_IDENT_COST)
        if isinstance(e, Select):
            return self._cost_select(e)
        if isinstance(e, Call):
            return self._cost_call(e)
        if isinstance(e, CreateList):
            return self._cost_create_list(e)
        if isinstance(e, CreateMap):
            return self._cost_create_map(e)
        assert isinstance(e, Comprehension)
        return self._cost_comprehension(e)

    def _cost_select(self, e: Select) -> Estimate:
        if e.test_only:
            return fixed(PRESENCE_TEST_COST).add(self.cost(e.operand))
        total = self.cost(e.operand)
        if self._type(e.operand).kind in ("map", "object"):
            total = total.add(fixed(SELECT_AND_IDENT_COST))
        self.paths[e] = self._path(e.operand) + [e.field]
        return total

    def _cost_call(self, e: Call) -> Estimate:
        if e.function == "dyn":
            arg_cost = self.cost(e.args[0])
            self._set_size(e, self.compute_size(e.args[0]))
            self._set_entry_size(e, self._entry_size(e.args[0]))
            return fixed(1).add(arg_cost)
        arg_costs = []
        arg_nodes = []
        for arg in e.args:
            arg_costs.append(self.cost(arg))
            arg_nodes.append(self._node(arg))
        overloads = self.checker.overloads.get(e, [])
        if not overloads:
            return fixed(0)
        total = fixed(0)
        target = None
        if e.target is not None:
            total = total.add(self.cost(e.target))
            target = self._node(e.target)
        fn_cost = Estimate(MAX_UINT64, 0)
        result_size: Estimate | None = None
        for overload in overloads:
            cost, size = self._function_cost(e, overload, target, arg_nodes, arg_costs)
            fn_cost = fn_cost.union(cost)
            if size is not None:
                result_size = size if result_size is None else result_size.union(size)
            if overload in ("index_list", "index_map") and e.args:
                entry = self._entry_size(e.args[0])
                result_size = entry.val if entry is not None else None
                self.paths[e] = self._path(e.args[0]) + ["@items" if overload == "index_list" else "@values"]
            if result_size is None:
                result_size = self.compute_size(e)
        self._set_size(e, result_size)
        return total.add(fn_cost)

    def _function_cost(
        self, e: Call, overload: str, target: _AstNode | None, args: list[_AstNode], arg_costs: list[Estimate]
    ) -> tuple[Estimate, Estimate | None]:
        arg_sum = fixed(0)
        for c in arg_costs:
            arg_sum = arg_sum.add(c)
        if overload in ("starts_with_string", "ends_with_string") and len(args) == 1:
            return self._size_or_unknown(args[0]).times_factor(STRING_TRAVERSAL_COST_FACTOR).add(arg_sum), None
        if overload == "in_list" and len(args) == 2:
            return self._size_or_unknown(args[1]).times_factor(1).add(arg_sum), None
        if overload == "matches_string" and target is not None and len(args) == 1:
            # the string plus one (an empty string can still meet an expensive regex), times the regex length
            string_cost = self._size_or_unknown(target).add(fixed(1)).times_factor(STRING_TRAVERSAL_COST_FACTOR)
            regex_cost = self._size_or_unknown(args[0]).times_factor(REGEX_STRING_LENGTH_COST_FACTOR)
            return string_cost.multiply(regex_cost).add(arg_sum), None
        if overload == "contains_string" and target is not None and len(args) == 1:
            string_cost = self._size_or_unknown(target).times_factor(STRING_TRAVERSAL_COST_FACTOR)
            substring_cost = self._size_or_unknown(args[0]).times_factor(STRING_TRAVERSAL_COST_FACTOR)
            return string_cost.multiply(substring_cost).add(arg_sum), None
        if overload in ("logical_or", "logical_and"):
            lhs, rhs = arg_costs
            return Estimate(lhs.min, lhs.add(rhs).max), None  # the right side may be short-circuited
        if overload == "conditional":
            size = self._size_or_unknown(args[1]).union(self._size_or_unknown(args[2]))
            true_entry = self._entry_size(args[1].expr)
            self._set_entry_size(e, true_entry.union(self._entry_size(args[2].expr)) if true_entry else None)
            return arg_costs[0].add(arg_costs[1].union(arg_costs[2])), size
        if overload in ("add_string", "add_bytes", "add_list") and len(args) == 2:
            result_size = self._size_or_unknown(args[0]).add(self._size_or_unknown(args[1]))
            left_entry = self._entry_size(args[0].expr)
            entry = left_entry.union(self._entry_size(args[1].expr)) if left_entry else None
            self._set_entry_size(e, entry)
            if overload == "add_list":  # O(1), tracked for its size
                return fixed(1).add(arg_sum), result_size
            return result_size.times_factor(STRING_TRAVERSAL_COST_FACTOR).add(arg_sum), result_size
        if overload in _SIZED_COMPARISONS:
            lhs, rhs = self._size_or_unknown(args[0]), self._size_or_unknown(args[1])
            smallest_max = min(lhs.max, rhs.max)
            low = 1 if smallest_max > 0 else 0
            return Estimate(low, smallest_max).times_factor(STRING_TRAVERSAL_COST_FACTOR).add(arg_sum), None
        return fixed(1).add(arg_sum), None  # O(1) functions

    def _cost_create_list(self, e: CreateList) -> Estimate:
        total = fixed(0)
        item_size = Estimate(0 if not e.elements else MAX_UINT64, 0)
        for element in e.elements:
            total = total.add(self.cost(element))
            item_size = item_size.union(self._size_or_unknown(element))
        self._set_entry_size(e, _EntrySize("list", fixed(1), item_size))
        return total.add(fixed(LIST_CREATE_BASE_COST))

    def _cost_create_map(self, e: CreateMap) -> Estimate:
        total = fixed(0)
        empty = 0 if not e.entries else MAX_UINT64
        key_size, val_size = Estimate(empty, 0), Estimate(empty, 0)
        for key, value in e.entries:
            total = total.add(self.cost(key)).add(self.cost(value))
            key_size = key_size.union(self._size_or_unknown(key))
            val_size = val_size.union(self._size_or_unknown(value))
        self._set_entry_size(e, _EntrySize("map", key_size, val_size))
        return total.add(fixed(MAP_CREATE_BASE_COST))

    def _cost_comprehension(self, e: Comprehension) -> Estimate:
        total = self.cost(e.iter_range).add(self.cost(e.accu_init))
        self._push(e.accu_var, _LocalVar(self._path(e.accu_init), self.compute_size(e.accu_init),
                                         self._entry_size(e.accu_init)))  # fmt: skip
        entry = self._entry_size(e.iter_range)
        container = entry.container if entry is not None else self._type(e.iter_range).kind
        if container == "list":
            size, subpath = (entry.val if entry else None), "@items"
        else:
            size, subpath = (entry.key if entry else None), "@keys"
        self._push(e.iter_var, _LocalVar(self._path(e.iter_range) + [subpath], size, None))
        loop_cost = self.cost(e.loop_condition)
        step_cost = self.cost(e.loop_step)
        self._pop(e.iter_var)
        total = total.add(self.cost(e.result))
        self._pop(e.accu_var)
        range_count = self._size_or_unknown(e.iter_range)
        total = total.add(range_count.multiply(step_cost.add(loop_cost)))
        if isinstance(e.accu_init, Literal):
            self._set_size(e, self.compute_size(e.accu_init))
        elif isinstance(e.accu_init, (CreateList, CreateMap)):
            self._set_size(e, range_count)
            self._set_entry_size(e, self._entry_size(e.loop_step))
        return total


def estimate_cost(rule: str, self_type: DeclType, expect: str = "bool") -> Estimate:
    """The cost range cel-go's EstimateCost gives one rule, with `self`/`oldSelf` of type self_type."""
    expr = parse(rule)
    checker = Checker({"self": self_type, "oldSelf": self_type})
    result = checker.check(expr)
    if result.kind != expect:
        raise UnsupportedCel(f"must evaluate to a {expect}, not a {result.kind}")
    return Coster(checker, _SizeEstimator(self_type)).cost(expr)


# --------------------------------------------------------------------------- a CRD's rules (apiextensions validation)


@dataclass
class RuleCost:
    path: str  # where the API server reports it, e.g. openAPIV3Schema.properties[spec].x-kubernetes-validations[3].rule
    rule: str
    max_cost: int  # the rule's own estimate
    cardinality: int  # how often it can run in one object
    cost: int  # max_cost x cardinality: what the API server compares with the limit


def _max_elements(schema: dict) -> int | None:
    """cel_validation.go extractMaxElements: how many children a node can have (None: unbounded)."""
    kind = schema.get("type")
    if kind == "object" and schema.get("additionalProperties") is not None:
        return max(schema["maxProperties"], 0) if "maxProperties" in schema else None
    if kind == "array":
        return max(schema["maxItems"], 0) if "maxItems" in schema else None
    return 1


def _walk(schema: dict, path: str, is_root: bool, cardinality: int | None, out: list[RuleCost]) -> None:
    rules = schema.get("x-kubernetes-validations") or []
    if rules:
        decl = schema_decl_type(schema, is_root or bool(schema.get("x-kubernetes-embedded-resource")))
        if decl is None:
            raise UnsupportedCel(f"{path}: rules on a schema CEL cannot see")
        for i, rule in enumerate(rules):
            where = f"{path}.x-kubernetes-validations[{i}]"
            try:
                max_cost = estimate_cost(rule["rule"], decl).max
            except UnsupportedCel as err:
                raise UnsupportedCel(f"{where}.rule: {err}") from None
            times = cardinality if cardinality is not None else max_cardinality(decl.min_serialized_size)
            out.append(RuleCost(f"{where}.rule", rule["rule"], max_cost, times, _multiply_guarded(max_cost, times)))
            if rule.get("messageExpression"):
                message_cost = estimate_cost(rule["messageExpression"], decl, expect="string").max
                expression = rule["messageExpression"]
                out.append(RuleCost(f"{where}.messageExpression", expression, message_cost, 1, message_cost))
    children = _max_elements(schema)
    child_cardinality = None if cardinality is None or children is None else _multiply_guarded(cardinality, children)
    for name, prop in (schema.get("properties") or {}).items():
        _walk(prop, f"{path}.properties[{name}]", False, child_cardinality, out)
    if isinstance(schema.get("additionalProperties"), dict):
        _walk(schema["additionalProperties"], f"{path}.additionalProperties", False, child_cardinality, out)
    if isinstance(schema.get("items"), dict):
        _walk(schema["items"], f"{path}.items", False, child_cardinality, out)


def _multiply_guarded(cost: int, cardinality: int) -> int:
    """validation.go multiplyWithOverflowGuard."""
    return 0 if cost == 0 else min(cost * cardinality, MAX_UINT64)


def schema_rule_costs(schema: dict, path: str = "openAPIV3Schema") -> list[RuleCost]:
    """Every rule of one openAPIV3Schema with its cost as the API server weighs it."""
    out: list[RuleCost] = []
    _walk(schema, path, True, 1, out)
    return out


def cost_error_message(name: str, cost: int, limit: int) -> str:
    """validation.go getCostErrorMessage."""
    factor = cost / limit
    if factor > 100.0:
        text = "more than 100x"
    elif factor < 1.5:
        text = f"{factor:f}x"
    else:
        text = f"{factor:.1f}x"
    return (
        f"{name} exceeds budget by factor of {text} (try simplifying the rule(s), or adding maxItems, "
        "maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )


def crd_cost_errors(crd: dict) -> list[str]:
    """What the API server answers about the CRD's CEL costs: empty when it accepts them."""
    errors = []
    for v, version in enumerate(crd["spec"]["versions"]):
        path = f"spec.versions[{v}].schema.openAPIV3Schema"
        costs = schema_rule_costs(version["schema"]["openAPIV3Schema"], path)
        total = 0
        for rule in costs:
            if rule.cost > STATIC_ESTIMATED_COST_LIMIT:
                kind = "messageExpression" if rule.path.endswith("messageExpression") else "rule"
                message = cost_error_message(f"estimated {kind} cost", rule.cost, STATIC_ESTIMATED_COST_LIMIT)
                errors.append(f"{rule.path}: Forbidden: {message}")
            total = min(total + rule.cost, MAX_UINT64)
        if total > STATIC_ESTIMATED_CRD_COST_LIMIT:
            message = cost_error_message("total CRD cost", total, STATIC_ESTIMATED_CRD_COST_LIMIT)
            errors.append(f"^: Forbidden: {message}")
    return errors

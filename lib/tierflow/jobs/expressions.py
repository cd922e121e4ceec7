"""Row-level check expressions: a small, safe subset of Python syntax turned into Narwhals.

The same string becomes the same Narwhals expression on every engine, so a check means
the same thing on Polars, Dask and Spark. Only what is listed here parses; anything
else (attribute access, arbitrary calls, subscripts, lambdas) is an error naming the
offending piece.

Grammar: column names; int, float, str and bool literals; ``+ - * / // %``; comparisons
``== != < <= > >=`` (chains allowed); ``and``, ``or``, ``not``; ``x in (1, 2)`` and
``not in``; ``x is None`` / ``x is not None``; functions ``abs(x)``, ``len(s)``,
``lower(s)``, ``upper(s)``, ``startswith(s, "p")``, ``endswith(s, "p")``.

Null semantics follow SQL: a comparison with a null is null, and a check fails only when
its expression is false (a null result passes, as in a SQL CHECK constraint).

Example:
    >>> cols = {"quantity", "unit_price", "status"}
    >>> to_expr("quantity * unit_price > 0 and status != 'void'", cols)  # doctest: +SKIP
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Collection
from typing import Any

import narwhals as nw


class ExpressionError(ValueError):
    """The expression uses something outside the supported subset, or an unknown column."""


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    # a - (a // b) * b: Python's modulo (the sign of b) on every engine; Narwhals has no
    # modulo for Dask, and Spark's % would take the sign of a.
    ast.Mod: lambda a, b: a - (a // b) * b,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _literals(node: ast.expr, source: str) -> list[Any]:
    if not isinstance(node, (ast.Tuple, ast.List, ast.Set)) or not all(
        isinstance(e, ast.Constant) for e in node.elts
    ):
        raise ExpressionError(f"`in` needs a tuple of literals in {source!r}")
    return [e.value for e in node.elts if isinstance(e, ast.Constant)]


class _Builder:
    def __init__(self, source: str, columns: Collection[str]) -> None:
        self.source = source
        self.columns = set(columns)

    def fail(self, node: ast.AST, what: str) -> ExpressionError:
        piece = ast.get_source_segment(self.source, node) or type(node).__name__
        return ExpressionError(f"{what} `{piece}` in check expression {self.source!r}")

    def build(self, node: ast.expr) -> Any:  # noqa: PLR0912 - one branch per node type
        if isinstance(node, ast.Name):
            if node.id not in self.columns:
                raise self.fail(node, "unknown column")
            return nw.col(node.id)
        if isinstance(node, ast.Constant):
            if node.value is None or not isinstance(node.value, (int, float, str, bool)):
                raise self.fail(node, "unsupported literal")
            return nw.lit(node.value)
        if isinstance(node, ast.BoolOp):
            parts = [self.build(v) for v in node.values]
            combined = parts[0]
            for part in parts[1:]:
                combined = (combined & part) if isinstance(node.op, ast.And) else (combined | part)
            return combined
        if isinstance(node, ast.UnaryOp):
            operand = self.build(node.operand)
            if isinstance(node.op, ast.Not):
                return ~operand
            if isinstance(node.op, ast.USub):
                return operand * -1
            raise self.fail(node, "unsupported operator")
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.fail(node, "unsupported operator")
            return op(self.build(node.left), self.build(node.right))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(node, "unsupported syntax")

    def compare(self, node: ast.Compare) -> Any:
        result = None
        left_node = node.left
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.Is, ast.IsNot)):
                if not (isinstance(right_node, ast.Constant) and right_node.value is None):
                    raise self.fail(node, "`is` compares with None only")
                term = self.build(left_node).is_null()
                term = term if isinstance(op, ast.Is) else ~term
            elif isinstance(op, (ast.In, ast.NotIn)):
                term = self.build(left_node).is_in(_literals(right_node, self.source))
                term = term if isinstance(op, ast.In) else ~term
            else:
                fn = _COMPARE.get(type(op))
                if fn is None:
                    raise self.fail(node, "unsupported comparison")
                term = fn(self.build(left_node), self.build(right_node))
            result = term if result is None else (result & term)
            left_node = right_node
        return result

    def call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise self.fail(node, "unsupported call")
        name, args = node.func.id, node.args
        if name in ("abs", "len", "lower", "upper") and len(args) == 1:
            arg = self.build(args[0])
            if name == "abs":
                return arg.abs()
            if name == "len":
                return arg.str.len_chars()
            return arg.str.to_lowercase() if name == "lower" else arg.str.to_uppercase()
        if name in ("startswith", "endswith") and len(args) == 2:
            prefix = args[1]
            if not (isinstance(prefix, ast.Constant) and isinstance(prefix.value, str)):
                raise self.fail(node, f"{name} needs a string literal as its second argument")
            arg = self.build(args[0])
            return (
                arg.str.starts_with(prefix.value)
                if name == "startswith"
                else arg.str.ends_with(prefix.value)
            )
        raise self.fail(node, "unsupported function")


def to_expr(source: str, columns: Collection[str]) -> Any:
    """Parse ``source`` into a Narwhals expression over ``columns``.

    Raises:
        ExpressionError: syntax outside the subset, or a column not in ``columns``.
    """
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"invalid check expression {source!r}: {exc.msg}") from None
    return _Builder(source, columns).build(tree.body)


def referenced_columns(source: str) -> set[str]:
    """Column names an expression mentions (for validating configs without building it)."""
    tree = ast.parse(source, mode="eval")
    calls = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - calls

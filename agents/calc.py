"""Arithmetic without eval: the expression is parsed and only numeric operations are evaluated.

An input that is not such arithmetic, or whose value cannot be computed (`1/0`, `sqrt(-1)`),
fails the call with `InvalidExpression`, whose message the user is shown as it is.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable

from sel_otel import AgentReplyError, code_span

DESCRIPTION = (
    "Evaluate arithmetic, e.g. `2**10 / (3 + 1)` or `sqrt(2) * pi` (math functions allowed)"
)
CACHE_TTL = 3600

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    name: getattr(math, name)
    for name in ("sqrt", "sin", "cos", "tan", "log", "log10", "log2", "exp", "floor", "ceil")
} | {"abs": abs, "round": round, "min": min, "max": max}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_MAX_EXPONENT = 10_000
#: Largest integer result, in bits (about 4,200 digits, under Python's 4,300-digit limit for
#: printing an int): big-integer arithmetic holds the interpreter lock, so an unbounded
#: product or power would stall the whole bot.
_MAX_BITS = 14_000
_MAX_LENGTH = 500
#: Characters that no markdown reads: an expression made of these alone is echoed as typed,
#: any other (a comment may hold a link or a heading) in a code span.
_PLAIN = re.compile(r"[0-9A-Za-z .,+\-/%()]+")


class InvalidExpression(AgentReplyError):
    """The input is not arithmetic this agent evaluates, or it has no value."""


def _check_size(op: ast.operator, left: float, right: float) -> None:
    """Refuse integer products and powers whose result would exceed _MAX_BITS."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    if isinstance(op, ast.Pow) and right > 0 and abs(left) > 1:
        bits = right * math.log2(abs(left))
    elif isinstance(op, ast.Mult):
        bits = left.bit_length() + right.bit_length()
    else:
        return
    if bits > _MAX_BITS:
        raise InvalidExpression(f"⚠️ Result too large (over {_MAX_BITS:,} bits)")


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    value = node.value if isinstance(node, ast.Constant) else None
    if isinstance(value, int | float) and not isinstance(value, bool):  # True is no number
        return value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            shown = right if isinstance(right, int) and right.bit_length() < 64 else "that"
            raise InvalidExpression(f"⚠️ Exponent {shown} is too large (limit {_MAX_EXPONENT})")
        _check_size(node.op, left, right)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*(_evaluate(arg) for arg in node.args))
    raise InvalidExpression(
        f"⚠️ Unsupported expression: {code_span(ast.unparse(node))} (numbers, + - * / // % **, "
        f"{', '.join(_CONSTANTS)} and {', '.join(_FUNCTIONS)})"
    )


def run(query: str) -> str:
    expression = query.strip()
    if not expression:
        raise InvalidExpression("⚠️ Give an expression, e.g. `2 * (3 + 4)`")
    if len(expression) > _MAX_LENGTH:
        raise InvalidExpression(f"⚠️ Expression longer than {_MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise InvalidExpression(f"⚠️ Not an expression: {exc.msg}") from None
    try:
        value = _evaluate(tree)
    except (ArithmeticError, ValueError, TypeError) as exc:  # 1/0, sqrt(-1), sqrt(1, 2)
        raise InvalidExpression(f"⚠️ Cannot evaluate {code_span(expression)}: {exc}") from None
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        value = int(value)
    shown = expression if _PLAIN.fullmatch(expression) else code_span(expression)
    return f"{shown} = {value}"

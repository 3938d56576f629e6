"""rules.py — the grammar of the rule book. Every config field states its type and rule in its
annotation, a string beside the default (`hidden_size: "int >= 1" = 512   # D`); the dataset
builders' options use the same strings (data.OPTION_RULES). A rule is one of

    TYPE                  int | float | str | bool (a float must also be finite)
    TYPE OP BOUND         OP one of >= > <= <: "int >= 1", "float > 0"
    TYPE in [LOW, HIGH]   either end may be open: "float in [0, 1)", "int in [0, 2**32)"
    str in a|b|c          one of the words listed: "str in rope|learned|none"

A bound is a number or + - * ** of numbers (2**32 - 2**16). Comments describe a field, they never
decide. Imports nothing of ours: config.py and data.py (which starts without torch) both read it."""
import ast
import dataclasses
import functools
import math
import operator
import re

TYPES = {"int": int, "float": float, "str": str, "bool": bool}
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Pow: operator.pow}
GRAMMAR = re.compile(r"\s*(?P<type>int|float|str|bool)(?:"
                     r"\s*(?P<op>>=|>|<=|<)\s*(?P<bound>.+?)"
                     r"|\s+in\s*(?P<left>[\[(])\s*(?P<low>[^,]+?)\s*,"
                     r"\s*(?P<high>[^\])]+?)\s*(?P<right>[\])])"
                     r"|\s+in\s+(?P<choices>[\w.-]+(?:\s*\|\s*[\w.-]+)*))?\s*")


@dataclasses.dataclass(frozen=True)
class Rule:
    text: str             # as written in the annotation (--help prints it)
    kind: type            # int, float, str or bool
    limits: tuple = ()    # ((operator, bound), ...) that a value must satisfy
    choices: tuple = ()
    words: str = ""       # what a value must be, for an error line: "an integer >= 1", "in [0, 1)"

    def broken(self, value):
        """What `value` must be when it breaks the rule (a phrase for an error line), else None."""
        if type(value) is not self.kind and not (self.kind is float and type(value) is int):
            return article(self.kind)
        if (self.kind is float and not math.isfinite(value)
                or any(not ok(value, limit) for ok, limit in self.limits)
                or self.choices and value not in self.choices):
            return self.words
        return None


def article(kind):
    """int -> 'an int', float -> 'a float'."""
    return ("an " if kind.__name__[0] in "aeiou" else "a ") + kind.__name__


def bound(text):
    """A rule's bound: a number, or + - * ** of numbers (no names, no calls)."""
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
            return ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        raise TypeError(f"bound {text!r} is not a number")
    try:
        return value(ast.parse(text, mode="eval").body)
    except SyntaxError:
        raise TypeError(f"bound {text!r} is not a number") from None


@functools.lru_cache(maxsize=None)
def parse(text):
    """An annotation string -> Rule. A bare type (`int`) is refused, and so is a quoted string:
    `from __future__ import annotations` turns the annotation "int >= 1" into "'int >= 1'"."""
    m = GRAMMAR.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise TypeError(f"{text!r} is not a rule: TYPE [OP BOUND | in [LOW, HIGH] | in a|b|c]")
    kind, g = TYPES[m["type"]], m.groupdict()
    if (g["op"] or g["left"]) and kind not in (int, float) or g["choices"] and kind is not str:
        raise TypeError(f"{text!r}: bounds are for int and float, a list of words for str")
    number = "an integer" if kind is int else "a finite number"
    if g["choices"]:
        choices = tuple(c.strip() for c in g["choices"].split("|"))
        return Rule(text, kind, choices=choices, words="one of " + ", ".join(choices))
    if g["op"]:
        limits = ((OPS[g["op"]], bound(g["bound"])),)
        return Rule(text, kind, limits, words=f"{number} {g['op']} {g['bound']}")
    if g["left"]:
        limits = ((operator.ge if g["left"] == "[" else operator.gt, bound(g["low"])),
                  (operator.le if g["right"] == "]" else operator.lt, bound(g["high"])))
        return Rule(text, kind, limits, words=f"in {g['left']}{g['low']}, {g['high']}{g['right']}")
    return Rule(text, kind, words=number if kind is float else article(kind))


@functools.lru_cache(maxsize=None)
def of(cls):
    """{field name: Rule} of a config dataclass from its annotations (a bad one names the field)."""
    out = {}
    for f in dataclasses.fields(cls):
        try:
            out[f.name] = parse(f.type)
        except TypeError as e:
            raise TypeError(f"{cls.__module__}.{cls.__qualname__}.{f.name}: {e}") from None
    return out

"""Mutants of a Python source file: one small, plausible bug each, found on the AST (not by line number).

A mutant is the original source with one node's text replaced (an operator, a constant, a dropped
keyword argument, a deleted call statement...). Its id names the function, the operator and the
original code, plus an occurrence number, so it survives edits elsewhere in the file: a survivor
judged equivalent stays judged until the code it mutates changes.

What is never mutated: docstrings and other strings, annotations, imports, decorators, the
arguments of `raise` (messages) and of logging/warning calls, lines marked `# pragma: no mutate`.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
          ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr}
CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
          ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
QUIET_CALLS = {"log", "logger", "logging", "warnings"}  # receivers whose calls are diagnostics only
# texts and widget affordances: no behaviour of the pack to test (the server checks min/max, not step)
COSMETIC_KEYWORDS = {"tooltip", "display_name", "description", "category", "placeholder", "hint", "path", "step",
                     "round", "display_mode", "multiline"}
PRAGMA = "pragma: no mutate"


@dataclass(frozen=True)
class Mutant:
    path: str            # relative to the repo root
    id: str              # stable: path::function::operator::original#occurrence
    line: int
    description: str
    source: str          # the whole mutated file
    end_line: int = 0
    import_time: bool = False  # runs when the module is imported (module level, class body, defaults)
    body: tuple[int, int] | None = None  # for a function's default value: the lines of that function's body

    def diff_line(self, original: str) -> str:
        before = original.splitlines()[self.line - 1].strip()
        after_lines = self.source.splitlines()
        after = after_lines[self.line - 1].strip() if self.line <= len(after_lines) else ""
        return f"{before}  ->  {after}"


def _name(node: ast.AST) -> str:
    return {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
            ast.Pow: "**", ast.BitOr: "|", ast.BitAnd: "&", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
            ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in",
            ast.NotIn: "not in", ast.And: "and", ast.Or: "or"}.get(type(node), type(node).__name__)


def _call_root(call: ast.Call) -> str | None:
    f = call.func
    while isinstance(f, ast.Attribute):
        f = f.value
    return f.id if isinstance(f, ast.Name) else None


class _Finder(ast.NodeVisitor):
    """Collects (node, replacement text, operator, description) in source order, tracking the function."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.scope: list[str] = []
        self.optional: list[set[str]] = [set()]  # per scope: parameters that may be None
        self.bodies = 0  # how many function bodies we are in (0: the code runs at import)
        self.defaults_of: tuple[int, int] | None = None  # body lines of the function whose defaults we visit
        self.found: list[tuple] = []  # (scope, node, replacement, op, description, import_time)

    # ---- what is never visited ----------------------------------------------------------------
    def _skip_line(self, node) -> bool:
        return PRAGMA in self.lines[node.lineno - 1]

    def visit_Import(self, node):
        pass

    visit_ImportFrom = visit_Import

    def visit_Raise(self, node):
        pass

    def visit_Assert(self, node):
        pass

    def visit_JoinedStr(self, node):
        pass

    @staticmethod
    def _optional_params(node) -> set[str]:
        args = node.args
        positional = [*args.posonlyargs, *args.args]
        defaults = dict(zip([a.arg for a in positional[len(positional) - len(args.defaults):]], args.defaults))
        defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
        out = set()
        for a in [*positional, *args.kwonlyargs]:
            default = defaults.get(a.arg)
            if (a.annotation is not None and "None" in ast.unparse(a.annotation)) or \
                    (isinstance(default, ast.Constant) and default.value is None):
                out.add(a.arg)
        return out

    def _visit_scope(self, node, name):
        self.scope.append(name)
        is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        self.optional.append(self._optional_params(node) if is_function else set())
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]  # docstring
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            outer, self.defaults_of = self.defaults_of, (node.body[0].lineno, node.body[-1].end_lineno)
            for default in [*node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]:
                self.visit(default)
            self.defaults_of = outer
        else:
            for base in node.bases:
                self.visit(base)
        self.bodies += is_function
        for stmt in body:
            self.visit(stmt)
        self.bodies -= is_function
        self.scope.pop()
        self.optional.pop()

    def visit_FunctionDef(self, node):
        self._visit_scope(node, node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._visit_scope(node, node.name)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_arg(self, node):
        pass

    # ---- mutation sites -------------------------------------------------------------------------
    def add(self, node, replacement: str, op: str, description: str):
        if not self._skip_line(node):
            self.found.append((".".join(self.scope) or "<module>", node, replacement, op, description,
                               self.bodies == 0, self.defaults_of if self.bodies == 0 else None))

    def _swap(self, node, field_ops, new_op):
        clone = ast.parse(ast.unparse(node), mode="eval").body
        setattr(clone, field_ops[0], new_op) if field_ops[1] is None else \
            getattr(clone, field_ops[0]).__setitem__(field_ops[1], new_op)
        return f"({ast.unparse(clone)})"

    def visit_BinOp(self, node):
        new = BINOPS.get(type(node.op))
        if new is not None and not (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant)
                                    and isinstance(node.left.value, str)):
            self.add(node, self._swap(node, ("op", None), new()), "binop",
                     f"{_name(node.op)} -> {_name(new())}")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        new = BINOPS.get(type(node.op))
        if new is not None:
            text = ast.unparse(ast.AugAssign(target=node.target, op=new(), value=node.value))
            self.add(node, text, "augassign", f"{_name(node.op)}= -> {_name(new())}=")
            self.add(node, "pass", "delete", "statement deleted")
        self.generic_visit(node)

    def visit_Compare(self, node):
        for i, op in enumerate(node.ops):
            new = CMPOPS.get(type(op))
            if new is not None:
                self.add(node, self._swap(node, ("ops", i), new()), "compare", f"{_name(op)} -> {_name(new())}")
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        new = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self.add(node, f"({ast.unparse(ast.BoolOp(op=new, values=node.values))})", "boolop",
                 f"{_name(node.op)} -> {_name(new)}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, (ast.Not, ast.USub)):
            if not (isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)):
                self.add(node, f"({ast.unparse(node.operand)})", "unary", f"{type(node.op).__name__.lower()} removed")
            elif isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
                self.add(node, repr(node.operand.value), "number", f"-{node.operand.value} -> {node.operand.value}")
                return
        self.generic_visit(node)

    def visit_If(self, node):
        if not isinstance(node.test, (ast.Compare, ast.BoolOp, ast.UnaryOp)):
            self.add(node.test, f"(not {ast.unparse(node.test)})", "negate", "condition negated")
        self.generic_visit(node)

    def visit_IfExp(self, node):
        if not isinstance(node.test, (ast.Compare, ast.BoolOp, ast.UnaryOp)):
            self.add(node.test, f"(not {ast.unparse(node.test)})", "negate", "condition negated")
        self.generic_visit(node)

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool):
            self.add(node, repr(not v), "bool", f"{v} -> {not v}")
        elif isinstance(v, int):
            new = 1 if v == 0 else (0 if v == 1 else v + 1)
            self.add(node, repr(new), "number", f"{v} -> {new}")
        elif isinstance(v, float):
            new = 1.0 if v == 0 else v * 2
            self.add(node, repr(new), "number", f"{v!r} -> {new!r}")

    def visit_Call(self, node):
        if _call_root(node) in QUIET_CALLS:
            return
        for arg in node.args:
            if isinstance(arg, ast.Name) and arg.id in self.optional[-1]:  # an optional value not passed on
                args = [ast.Constant(None) if a is arg else a for a in node.args]
                text = ast.unparse(ast.Call(func=node.func, args=args, keywords=node.keywords))
                self.add(node, text, "argnone", f"argument {arg.id} -> None")
        for kw in node.keywords:
            if kw.arg is not None and kw.arg not in COSMETIC_KEYWORDS:
                kept = [k for k in node.keywords if k is not kw]
                text = ast.unparse(ast.Call(func=node.func, args=node.args, keywords=kept))
                self.add(node, text, "kwarg", f"keyword {kw.arg}= dropped")
        self.visit(node.func)
        for arg in node.args:
            self.visit(arg)
        for kw in node.keywords:
            if kw.arg not in COSMETIC_KEYWORDS:
                self.visit(kw.value)

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Call) and _call_root(node.value) not in QUIET_CALLS:
            self.add(node, "pass", "delete", "call statement deleted")
        self.generic_visit(node)

    def visit_Return(self, node):
        # `return x` inside a function whose result matters: only the value is mutated (below)
        self.generic_visit(node)

    def visit_Subscript(self, node):
        self.generic_visit(node)

    def visit_Expression(self, node):
        self.generic_visit(node)


def _offsets(lines: list[str]) -> list[int]:
    starts, total = [], 0
    for line in lines:
        starts.append(total)
        total += len(line)
    return starts


def _encoded_col(line: str, col: int) -> int:
    """ast columns are UTF-8 byte offsets; the source is spliced as str."""
    return len(line.encode("utf-8")[:col].decode("utf-8", errors="ignore"))


def mutants_of(path: str, source: str) -> list[Mutant]:
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    starts = _offsets(lines)
    finder = _Finder(lines)
    finder.visit(tree)
    original_dump = ast.dump(tree)
    out, seen = [], {}
    for scope, node, replacement, op, description, import_time, body in finder.found:
        a = starts[node.lineno - 1] + _encoded_col(lines[node.lineno - 1], node.col_offset)
        b = starts[node.end_lineno - 1] + _encoded_col(lines[node.end_lineno - 1], node.end_col_offset)
        original = source[a:b]
        mutated = source[:a] + replacement + source[b:]
        try:
            mutated_tree = ast.parse(mutated)
            compile(mutated_tree, path, "exec")
        except SyntaxError:
            continue
        if ast.dump(mutated_tree) == original_dump:
            continue
        key = f"{path}::{scope}::{op}::{' '.join(original.split())[:80]}::{description}"
        seen[key] = seen.get(key, -1) + 1
        out.append(Mutant(path, f"{key}#{seen[key]}", node.lineno, description, mutated, node.end_lineno, import_time,
                          body))
    return out

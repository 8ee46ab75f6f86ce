"""Which test runs which line: a pytest plugin for one traced run of the suite (mutant test selection).

Lines run while a fixture is set up are credited to the fixture, and through it to every test that
uses it (a session fixture is built once, but a mutant in it changes every test that reads it).
`functools` caches of the pack's and the tests' modules are cleared before each test, so a cached
function's body is credited to every test that calls it, not only to the first one.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest


class LineTracer:
    def __init__(self, root: Path, files: list[str]):
        self.root = Path(root)
        self.files = {str(self.root / f): f for f in files}
        self.stack: list[set] = []           # line sets being filled: the test's, then nested fixtures'
        self.tests: dict[str, set] = {}      # nodeid -> {(file, line)} run by its own phases
        self.fixtures: dict[str, set] = {}   # fixture key -> lines run by its setup
        self.uses: dict[str, list[str]] = {}  # nodeid -> fixture keys in its closure
        self.seconds: dict[str, float] = {}
        self.outcomes: dict[str, str] = {}

    # ---- tracing -----------------------------------------------------------------------------------
    def _global(self, frame, event, arg):
        return self._local if frame.f_code.co_filename in self.files else None

    def _local(self, frame, event, arg):
        if event == "line" and self.stack:
            self.stack[-1].add((self.files[frame.f_code.co_filename], frame.f_lineno))
        return self._local

    def start(self):
        sys.settrace(self._global)
        threading.settrace(self._global)

    def stop(self):
        sys.settrace(None)
        threading.settrace(None)

    # ---- pytest hooks ------------------------------------------------------------------------------
    def _clear_caches(self):
        root = str(self.root)
        for module in list(sys.modules.values()):
            if not (getattr(module, "__file__", None) or "").startswith(root):
                continue
            for value in list(vars(module).values()):
                clear = getattr(value, "cache_clear", None)
                if callable(clear) and hasattr(value, "cache_info"):
                    clear()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self._clear_caches()
        lines: set = set()
        self.stack.append(lines)
        began = time.perf_counter()
        yield
        self.stack.pop()
        self.seconds[item.nodeid] = time.perf_counter() - began
        self.tests[item.nodeid] = lines
        info = getattr(item, "_fixtureinfo", None)
        keys = []
        for name in item.fixturenames:
            defs = info.name2fixturedefs.get(name) if info is not None else None
            if defs:
                keys.append(self._key(defs[-1]))
        self.uses[item.nodeid] = keys

    @staticmethod
    def _key(fixturedef) -> str:
        return f"{fixturedef.baseid}::{fixturedef.argname}"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        lines = self.fixtures.setdefault(self._key(fixturedef), set())
        self.stack.append(lines)
        try:
            yield
        finally:
            self.stack.pop()

    def pytest_runtest_logreport(self, report):
        if report.failed or report.outcome == "skipped" and report.when in ("setup", "call"):
            self.outcomes[report.nodeid] = report.outcome if report.failed else "skipped"
        elif report.when == "call":
            self.outcomes.setdefault(report.nodeid, "passed")

    # ---- result ------------------------------------------------------------------------------------
    def table(self) -> dict:
        """{"lines": {file: {line: [nodeid...]}}, "seconds": {nodeid: s}, "outcomes": {nodeid: outcome}}."""
        by_line: dict[str, dict[int, set]] = {}
        fixture_users: dict[str, set] = {}
        for nodeid, keys in self.uses.items():
            for key in keys:
                fixture_users.setdefault(key, set()).add(nodeid)
        for nodeid, lines in self.tests.items():
            for file, line in lines:
                by_line.setdefault(file, {}).setdefault(line, set()).add(nodeid)
        for key, lines in self.fixtures.items():
            for file, line in lines:
                by_line.setdefault(file, {}).setdefault(line, set()).update(fixture_users.get(key, ()))
        return {"lines": {f: {str(n): sorted(ids) for n, ids in lines.items()} for f, lines in by_line.items()},
                "seconds": self.seconds, "outcomes": self.outcomes}

"""Mutation testing of the core's numerics and the nodes' glue: does the suite notice a small bug?

    python tests/mutation/run_mutants.py                      # every target file
    python tests/mutation/run_mutants.py infinity_core/model/ops.py nodes/sampling.py
    python tests/mutation/run_mutants.py --list               # the mutants, without running anything
    python tests/mutation/run_mutants.py --rerun report.json  # only the survivors of an earlier run

How: the suite runs once under a line tracer (tests/mutation/tracing.py) in a scratch copy of the
repo, which records the tests that execute each line. Then each mutant (tests/mutation/mutants.py:
one operator, constant, keyword argument, condition or call changed) is written into the copy and
only the tests that execute its lines run, fastest first, stopping at the first failure; a mutant of
code that runs at import (constants, class bodies, defaults) runs every test that touches its file.
Killed: a test fails, errors or runs past the timeout. Survived: they all pass, or no test runs the
line ("uncovered"). Survivors judged equivalent (nothing observable changes) are listed with the
reason in tests/mutation/equivalent.txt and scored apart. Not part of the CI run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from mutants import Mutant, mutants_of  # noqa: E402

TARGETS = [
    "infinity_core/sampling/sampler.py", "infinity_core/model/transformer.py", "infinity_core/model/layers.py",
    "infinity_core/model/ops.py", "infinity_core/model/quantizer.py", "infinity_core/model/rope.py",
    "infinity_core/files/checkpoints.py", "infinity_core/model/text_encoder.py", "infinity_core/sampling/memory.py",
    "nodes/sampling.py", "nodes/latents.py", "nodes/latent.py", "nodes/widgets.py", "nodes/comfy_glue.py",
    "nodes/loaders.py",
    "nodes/conditioning.py", "infinity_core/sampling/masks.py", "infinity_core/model/attention.py", "nodes/inpaint.py",
    "infinity_core/model/pruning.py", "infinity_core/sampling/speed.py", "infinity_core/sampling/image_bits.py",
    "infinity_core/sampling/plan.py",
]
EQUIVALENT = HERE / "equivalent.txt"
PRELOAD = ("torch", "numpy", "safetensors.torch", "PIL.Image", "transformers", "transformers.models.t5.modeling_t5",
           "tokenizers", "pytest")
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".venv", "*.pyc", ".pytest_cache", "node_modules",
                                     "mutation-report*.json")
PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore"]


@dataclass
class Outcome:
    mutant: Mutant
    status: str           # killed | timeout | survived | uncovered | error
    seconds: float
    tests: int
    detail: str = ""


@dataclass
class Job:
    mutant: Mutant
    pid: int
    proc: object          # subprocess.Popen with --no-fork, else None
    started: float
    limit: float
    log: Path
    tests: int


# ---- a pytest run in a scratch copy ------------------------------------------------------------------
def _child(root: Path, args: list[str], log: Path | None, plugin_out: Path | None) -> None:
    """In a forked child: the heavy libraries are imported already; the pack and the tests are not."""
    if log is not None:
        os.setpgid(0, 0)
        fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    os.chdir(root)
    sys.path.insert(0, str(root))  # what `python -m pytest` does with the working directory
    sys.dont_write_bytecode = True  # a stale .pyc of the same size and mtime would hide a mutant
    import pytest
    plugins = []
    if plugin_out is not None:
        from tracing import LineTracer
        tracer = LineTracer(root, TARGETS_IN_RUN)
        plugins.append(tracer)
        tracer.start()
    code = pytest.main(args, plugins=plugins)
    if plugin_out is not None:
        plugins[0].stop()
        plugin_out.write_text(json.dumps(plugins[0].table()))
    os._exit(int(code))


TARGETS_IN_RUN: list[str] = []
RUNNING: set[int] = set()  # process groups of the children still running (killed on exit)


def spawn(root: Path, args: list[str], log: Path, fork: bool, plugin_out: Path | None = None):
    if fork:
        pid = os.fork()
        if pid == 0:
            try:
                _child(root, args, log, plugin_out)
            finally:
                os._exit(70)
        RUNNING.add(pid)
        return pid, None
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-B", "-m", "pytest", *args]
    if plugin_out is not None:
        cmd = [sys.executable, "-B", str(HERE / "run_mutants.py"), "--trace-child", str(root), str(plugin_out),
               ",".join(TARGETS_IN_RUN), "--", *args]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=root, stdout=fh, stderr=fh, start_new_session=True, env=env)
    RUNNING.add(proc.pid)
    return proc.pid, proc


def finished(pid: int, proc, started: float, limit: float):
    """None while running; else ('exit', code) or ('timeout', None)."""
    if proc is not None:
        code = proc.poll()
        if code is not None:
            RUNNING.discard(pid)
            return "exit", code
    else:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            RUNNING.discard(pid)
            return "exit", os.waitstatus_to_exitcode(status)
    if time.monotonic() - started > limit:
        try:
            os.killpg(pid, signal.SIGKILL)  # the child leads its own process group
        except ProcessLookupError:
            pass
        proc.wait() if proc is not None else os.waitpid(pid, 0)
        RUNNING.discard(pid)
        return "timeout", None
    return None


def run_blocking(root: Path, args: list[str], log: Path, fork: bool, limit: float, plugin_out: Path | None = None):
    pid, proc = spawn(root, args, log, fork, plugin_out)
    started = time.monotonic()
    while (result := finished(pid, proc, started, limit)) is None:
        time.sleep(0.1)
    return result


def classify(kind: str, code: int | None) -> str:
    if kind == "timeout":
        return "timeout"
    if code == 0:
        return "survived"
    if code in (1, 2, 3):  # failed / interrupted (e.g. the mutant breaks an import) / internal error
        return "killed"
    return "error"  # 4 usage, 5 no tests collected: the selection is wrong, not the mutant caught


# ---- which tests run a mutant ------------------------------------------------------------------------
class Selection:
    def __init__(self, table: dict):
        self.lines = {f: {int(n): ids for n, ids in lines.items()} for f, lines in table["lines"].items()}
        self.seconds = table["seconds"]
        self.users = {f: sorted({i for ids in lines.values() for i in ids}) for f, lines in self.lines.items()}

    def tests_for(self, m: Mutant) -> list[str]:
        lines = self.lines.get(m.path, {})
        if m.body is not None:  # a default value: the tests that call the function
            ids = {i for n in range(m.body[0], m.body[1] + 1) for i in lines.get(n, ())}
        elif m.import_time:  # module constants, class bodies: every test that runs code of the file
            ids = set(self.users.get(m.path, ()))
        else:
            ids = {i for n in range(m.line, (m.end_line or m.line) + 1) for i in lines.get(n, ())}
        return sorted(ids, key=lambda i: (self.seconds.get(i, 0.0), i))

    def limit(self, ids: list[str], factor: float) -> float:
        return factor * sum(self.seconds.get(i, 1.0) for i in ids) + 30


def load_equivalent() -> dict[str, str]:
    out = {}
    if EQUIVALENT.is_file():
        for line in EQUIVALENT.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, reason = line.partition(" | ")
                out[key.strip()] = reason.strip()
    return out


# ---- the run -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="repo-relative files to mutate (default: every target)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--ops", help="comma list of operators: binop,augassign,compare,boolop,unary,negate,number,"
                                      "bool,kwarg,argnone,delete")
    parser.add_argument("--sample", type=int, help="run a random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerun", help="a report JSON: run only its survivors (those still present and not judged "
                                        "equivalent since)")
    parser.add_argument("--report", default="mutation-report.json", help="where to write the JSON report")
    parser.add_argument("--no-fork", action="store_true", help="start a fresh Python per run (slower)")
    parser.add_argument("--timeout-factor", type=float, default=4.0)
    args = parser.parse_args(argv)

    paths = args.files or [t for t in TARGETS if (REPO / t).is_file()]
    for p in paths:
        if not (REPO / p).is_file():
            parser.error(f"no such file: {p}")
    mutants = [m for p in paths for m in mutants_of(p, (REPO / p).read_text())]
    if args.ops:
        mutants = [m for m in mutants if m.id.split("::")[2] in set(args.ops.split(","))]
    if args.rerun:
        previous = json.loads(Path(args.rerun).read_text())
        wanted = {o["id"] for o in previous["outcomes"] if o["status"] in ("survived", "uncovered", "error")}
        mutants = [m for m in mutants if m.id in wanted and m.id not in load_equivalent()]
    if args.sample and args.sample < len(mutants):
        mutants = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: (m.path, m.line))
    if args.list:
        for m in mutants:
            print(f"{m.path}:{m.line}: {m.description}: {m.diff_line((REPO / m.path).read_text())}\n    {m.id}")
        print(f"{len(mutants)} mutants")
        return 0

    fork = not args.no_fork and hasattr(os, "fork")
    os.environ.setdefault("INFINITY_SHARED", os.environ.get("INFINITY_SHARED") or str(REPO.parent / "shared"))
    for var in ("CI", "COMFYUI_PATH"):  # the default local run: no real-ComfyUI tier
        os.environ.pop(var, None)
    TARGETS_IN_RUN[:] = sorted({m.path for m in mutants})
    if fork:
        for name in PRELOAD:
            importlib.import_module(name)
        import torch
        torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="infinity-mutants-"))
    roots = []
    for i in range(max(1, args.jobs)):
        roots.append(scratch / f"w{i}" / REPO.name)
        shutil.copytree(REPO, roots[-1], ignore=COPY_IGNORE)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        selection = _trace(roots[0], fork)
        return _run(mutants, roots, fork, args, selection, load_equivalent())
    finally:
        for pid in list(RUNNING):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(scratch, ignore_errors=True)


def _trace(root: Path, fork: bool) -> Selection:
    out, log = root.parent / "lines.json", root.parent / "trace.log"
    began = time.monotonic()
    kind, code = run_blocking(root, ["tests", *PYTEST_ARGS], log, fork, 3600, plugin_out=out)
    if classify(kind, code) != "survived":
        raise SystemExit(f"the unmutated suite does not pass (exit {code}): fix it first\n{log.read_text()[-3000:]}")
    table = json.loads(out.read_text())
    skipped = [i for i, o in table["outcomes"].items() if o == "skipped"]
    print(f"traced run of the suite: {len(table['seconds'])} tests in {time.monotonic() - began:.0f}s"
          f" ({len(skipped)} skipped)", flush=True)
    return Selection(table)


def _run(mutants, roots, fork, args, selection: Selection, equivalent) -> int:
    sources = {p: (REPO / p).read_text() for p in {m.path for m in mutants}}
    outcomes: list[Outcome] = []
    queue, jobs = list(mutants), {}
    began = time.monotonic()

    def report(o: Outcome):
        outcomes.append(o)
        mark = {"killed": ".", "timeout": "T", "survived": "S", "uncovered": "U", "error": "E"}[o.status]
        m = o.mutant
        extra = "" if o.status in ("killed", "timeout") else f"\n      {m.diff_line(sources[m.path])}\n      {m.id}"
        print(f"[{len(outcomes)}/{len(mutants)} {time.monotonic() - began:5.0f}s] {mark} {m.path}:{m.line} "
              f"{m.description} ({o.tests} tests, {o.seconds:.1f}s){extra}", flush=True)

    while queue or jobs:
        for root in roots:
            while root not in jobs and queue:
                m = queue.pop(0)
                tests = selection.tests_for(m)
                if not tests:
                    report(Outcome(m, "uncovered", 0.0, 0))
                    continue
                (root / m.path).write_text(m.source)  # one mutant per scratch copy at a time
                log = root.parent / "mutant.log"
                pid, proc = spawn(root, [*tests, "-x", *PYTEST_ARGS], log, fork)
                jobs[root] = Job(m, pid, proc, time.monotonic(), selection.limit(tests, args.timeout_factor), log,
                                 len(tests))
        for root, job in list(jobs.items()):
            result = finished(job.pid, job.proc, job.started, job.limit)
            if result is None:
                continue
            del jobs[root]
            (root / job.mutant.path).write_text(sources[job.mutant.path])
            status = classify(*result)
            detail = job.log.read_text()[-1500:] if status == "error" else ""
            report(Outcome(job.mutant, status, time.monotonic() - job.started, job.tests, detail))
        time.sleep(0.05)
    return _summary(outcomes, sources, equivalent, args.report)


def _summary(outcomes: list[Outcome], sources, equivalent: dict[str, str], report_path: str) -> int:
    alive = ("survived", "uncovered")
    killed = [o for o in outcomes if o.status in ("killed", "timeout")]
    survived = [o for o in outcomes if o.status in alive and o.mutant.id not in equivalent]
    judged = [o for o in outcomes if o.status in alive and o.mutant.id in equivalent]
    errors = [o for o in outcomes if o.status == "error"]
    print("\n==== survivors (a test should fail on each) ====")
    for o in survived:
        m = o.mutant
        print(f"{m.path}:{m.line}: {m.description}{' (no test runs it)' if o.status == 'uncovered' else ''}: "
              f"{m.diff_line(sources[m.path])}\n    {m.id}")
    if judged:
        print("\n==== survivors judged equivalent (tests/mutation/equivalent.txt) ====")
        for o in judged:
            print(f"{o.mutant.path}:{o.mutant.line}: {o.mutant.diff_line(sources[o.mutant.path])}\n"
                  f"    why: {equivalent[o.mutant.id]}")
    for o in errors:
        print(f"\nERROR {o.mutant.path}:{o.mutant.line} {o.mutant.id}\n{o.detail}")
    per_file: dict[str, list[int]] = {}
    for o in outcomes:
        row = per_file.setdefault(o.mutant.path, [0, 0, 0])
        row[0] += o in killed
        row[1] += o.mutant.id in equivalent and o.status in alive
        row[2] += 1
    print("\n==== score ====")
    for path, (k, e, n) in sorted(per_file.items()):
        print(f"{path:32s} {k:4d} killed / {n:4d}" + (f"  ({e} equivalent)" if e else ""))
    scored = len(outcomes) - len(judged)
    print(f"killed {len(killed)} of {len(outcomes)} mutants: {len(survived)} survived, {len(judged)} judged "
          f"equivalent, {len(errors)} errors; score {len(killed)}/{scored} = {len(killed) / max(scored, 1):.1%} "
          "of the non-equivalent mutants")
    Path(report_path).write_text(json.dumps({"outcomes": [
        {"id": o.mutant.id, "path": o.mutant.path, "line": o.mutant.line, "status": o.status,
         "equivalent": o.mutant.id in equivalent, "seconds": round(o.seconds, 2), "tests": o.tests,
         "change": o.mutant.diff_line(sources[o.mutant.path])} for o in outcomes]}, indent=1))
    print(f"report: {report_path}")
    return 0 if not survived and not errors else 1


def _trace_child(argv: list[str]) -> None:
    """--no-fork: the traced run in a fresh interpreter (the parent captures its output)."""
    TARGETS_IN_RUN[:] = argv[2].split(",")
    _child(Path(argv[0]), argv[4:], None, Path(argv[1]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--trace-child":
        _trace_child(sys.argv[2:])
    sys.exit(main())

"""Mutation testing of the core's numerics and the nodes' glue: does the suite notice a small bug?

    python tests/mutation/run_mutants.py                    # every target file (long: see --jobs)
    python tests/mutation/run_mutants.py infinity_core/ops.py nodes/sampling.py
    python tests/mutation/run_mutants.py --list             # the mutants, without running anything
    python tests/mutation/run_mutants.py --rerun report.json   # only the survivors of an earlier run

Each mutant (tests/mutation/mutants.py: one operator, constant, keyword argument or call changed)
is written into a scratch copy of the repo and only the test files that exercise its file are run
(`TARGETS`), stopping at the first failure. A mutant is killed when a test fails, errors or runs
past the timeout; it survives when they all pass. Survivors judged equivalent (no observable
behaviour changes) are listed with the reason in tests/mutation/equivalent.txt and scored apart.
Not part of the CI run: it starts pytest once per mutant.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from mutants import Mutant, mutants_of  # noqa: E402

NODE_TESTS = ["tests/test_nodes_sampling.py", "tests/test_nodes.py", "tests/test_nodes_latents.py",
              "tests/test_comfy_fakes.py"]
# file -> the test files that exercise it, the quickest killers first
TARGETS = {
    "infinity_core/ops.py": ["tests/test_layers.py", "tests/test_sampler.py", "tests/test_reference_parity.py"],
    "infinity_core/layers.py": ["tests/test_layers.py", "tests/test_sampler.py", "tests/test_reference_parity.py",
                                "tests/test_memory.py"],
    "infinity_core/rope.py": ["tests/test_layers.py", "tests/test_reference_parity.py", "tests/test_sampler.py"],
    "infinity_core/transformer.py": ["tests/test_sampler.py", "tests/test_layers.py", "tests/test_reference_parity.py",
                                     "tests/test_memory.py"],
    "infinity_core/sampler.py": ["tests/test_sampler.py", "tests/test_reference_parity.py", *NODE_TESTS],
    "infinity_core/quantizer.py": ["tests/test_sampler.py", "tests/test_reference_parity.py",
                                   "tests/test_nodes_latents.py"],
    "infinity_core/checkpoints.py": ["tests/test_checkpoints.py", "tests/test_reference_parity.py"],
    "infinity_core/text_encoder.py": ["tests/test_text_encoder.py", "tests/test_nodes.py"],
    "infinity_core/memory.py": ["tests/test_memory.py", *NODE_TESTS],
    "nodes/sampling.py": NODE_TESTS,
    "nodes/latents.py": NODE_TESTS,
    "nodes/types.py": NODE_TESTS,
    "nodes/comfy_glue.py": NODE_TESTS,
    "nodes/loaders.py": NODE_TESTS,
    "nodes/conditioning.py": NODE_TESTS,
}
EQUIVALENT = HERE / "equivalent.txt"
PRELOAD = ("torch", "numpy", "safetensors.torch", "PIL.Image", "transformers", "transformers.models.t5.modeling_t5",
           "tokenizers", "pytest")
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".venv", "*.pyc", ".pytest_cache", "node_modules")


@dataclass
class Outcome:
    mutant: Mutant
    status: str           # killed | survived | timeout | error
    seconds: float
    detail: str = ""


@dataclass
class Worker:
    root: Path
    pid: int | None = None
    job: Mutant | None = None
    started: float = 0.0
    limit: float = 0.0
    log: Path | None = None
    proc: object = None   # the subprocess.Popen without --fork


def shared_dir() -> str:
    return os.environ.get("INFINITY_SHARED") or str(REPO.parent / "shared")


def tests_for(path: str) -> list[str]:
    wanted = TARGETS.get(path, ["tests"])
    present = [t for t in wanted if (REPO / t).exists()]
    return present or ["tests"]


def load_equivalent() -> dict[str, str]:
    out = {}
    if EQUIVALENT.is_file():
        for line in EQUIVALENT.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, reason = line.partition(" | ")
                out[key.strip()] = reason.strip()
    return out


# ---- running pytest in a scratch copy --------------------------------------------------------------
def _child(root: Path, tests: list[str], log: Path) -> None:
    """In a forked child: the heavy libraries are already imported; our code is not, so it is read fresh."""
    os.setpgid(0, 0)
    fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(root)
    sys.path.insert(0, str(root))  # what `python -m pytest` does with the working directory
    sys.dont_write_bytecode = True  # a stale .pyc of the same size and mtime would hide the mutant
    import pytest
    code = pytest.main([*tests, "-x", "-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore"])
    os._exit(int(code))


def start(worker: Worker, tests: list[str], limit: float, fork: bool) -> None:
    worker.log = worker.root.parent / f"{worker.root.name}.log"
    worker.started, worker.limit = time.monotonic(), limit
    if fork:
        pid = os.fork()
        if pid == 0:
            try:
                _child(worker.root, tests, worker.log)
            finally:
                os._exit(70)
        worker.pid = pid
    else:
        import subprocess
        with open(worker.log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-B", "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider",
                                     "--no-header", "-W", "ignore"], cwd=worker.root, stdout=fh, stderr=fh,
                                    start_new_session=True)
        worker.pid, worker.proc = proc.pid, proc


def poll(worker: Worker) -> tuple[str, int | None] | None:
    """None while running; else ('exit', code) or ('timeout', None)."""
    if worker.proc is not None:
        code = worker.proc.poll()
        if code is not None:
            worker.proc = None
            return "exit", code
    else:
        pid, status = os.waitpid(worker.pid, os.WNOHANG)
        if pid:
            return "exit", os.waitstatus_to_exitcode(status)
    if time.monotonic() - worker.started > worker.limit:
        try:
            os.killpg(worker.pid, signal.SIGKILL)  # the child leads its own process group
        except ProcessLookupError:
            pass
        if worker.proc is not None:
            worker.proc.wait()
            worker.proc = None
        else:
            os.waitpid(worker.pid, 0)
        return "timeout", None
    return None


def run_one(worker: Worker, tests: list[str], limit: float, fork: bool) -> tuple[str, int | None, float]:
    start(worker, tests, limit, fork)
    while (result := poll(worker)) is None:
        time.sleep(0.05)
    return (*result, time.monotonic() - worker.started)


def classify(kind: str, code: int | None) -> str:
    if kind == "timeout":
        return "timeout"
    if code == 0:
        return "survived"
    if code in (1, 2, 3):  # failed / interrupted (e.g. the mutant breaks an import) / internal error
        return "killed"
    return "error"  # 4 usage, 5 no tests collected: the selection is wrong, not the mutant caught


# ---- the run -----------------------------------------------------------------------------------
def collect(paths: list[str], ops: set[str] | None) -> list[Mutant]:
    found = []
    for path in paths:
        found += [m for m in mutants_of(path, (REPO / path).read_text()) if ops is None or m.id.split("::")[2] in ops]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="repo-relative files to mutate (default: every target)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--ops", help="comma list of operators (binop,compare,boolop,unary,negate,number,bool,"
                                      "kwarg,delete,augassign)")
    parser.add_argument("--sample", type=int, help="run a random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerun", help="a report JSON: run only its survivors (those still present)")
    parser.add_argument("--report", default="mutation-report.json", help="where to write the JSON report")
    parser.add_argument("--no-fork", action="store_true", help="start a fresh Python per mutant (slower)")
    parser.add_argument("--timeout-factor", type=float, default=3.0)
    args = parser.parse_args(argv)

    paths = args.files or list(TARGETS)
    for p in paths:
        if not (REPO / p).is_file():
            parser.error(f"no such file: {p}")
    mutants = collect(paths, set(args.ops.split(",")) if args.ops else None)
    if args.rerun:
        previous = json.loads(Path(args.rerun).read_text())
        wanted = {o["id"] for o in previous["outcomes"] if o["status"] in ("survived", "error")}
        mutants = [m for m in mutants if m.id in wanted]
    if args.sample and args.sample < len(mutants):
        mutants = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: (m.path, m.line))
    equivalent = load_equivalent()
    if args.list:
        for m in mutants:
            print(f"{m.path}:{m.line}: {m.description}: {m.diff_line((REPO / m.path).read_text())}\n    {m.id}")
        print(f"{len(mutants)} mutants")
        return 0

    fork = not args.no_fork and hasattr(os, "fork")
    os.environ.setdefault("INFINITY_SHARED", shared_dir())
    os.environ.pop("CI", None)
    if fork:
        import importlib
        for name in PRELOAD:
            importlib.import_module(name)
        import torch
        torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="infinity-mutants-"))
    workers = []
    for i in range(max(1, args.jobs)):
        root = scratch / f"w{i}" / REPO.name
        shutil.copytree(REPO, root, ignore=COPY_IGNORE)
        workers.append(Worker(root))
    try:
        return _run(mutants, workers, fork, args, equivalent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _baselines(paths: list[str], worker: Worker, fork: bool) -> dict[str, float]:
    seconds = {}
    for key in sorted({tuple(tests_for(p)) for p in paths}):
        kind, code, took = run_one(worker, list(key), 3600, fork)
        if classify(kind, code) != "survived":
            log = worker.log.read_text()[-3000:] if worker.log else ""
            raise SystemExit(f"the unmutated tests fail ({' '.join(key)}, exit {code}): fix them first\n{log}")
        seconds[key] = took
        print(f"baseline {took:6.1f}s  {' '.join(key)}", flush=True)
    return seconds


def _run(mutants: list[Mutant], workers: list[Worker], fork: bool, args, equivalent: dict[str, str]) -> int:
    sources = {p: (REPO / p).read_text() for p in {m.path for m in mutants}}
    base = _baselines(sorted(sources), workers[0], fork)
    outcomes: list[Outcome] = []
    queue = list(mutants)
    began = time.monotonic()
    while queue or any(w.job for w in workers):
        for w in workers:
            if w.job is None and queue:
                # a worker holds one mutant at a time; two workers never mutate the same scratch copy
                m = queue.pop(0)
                (w.root / m.path).write_text(m.source)
                tests = tests_for(m.path)
                w.job = m
                start(w, tests, args.timeout_factor * base[tuple(tests)] + 20, fork)
        for w in workers:
            if w.job is None:
                continue
            result = poll(w)
            if result is None:
                continue
            m, took = w.job, time.monotonic() - w.started
            (w.root / m.path).write_text(sources[m.path])
            status = classify(*result)
            detail = "" if status != "error" else w.log.read_text()[-800:]
            outcomes.append(Outcome(m, status, took, detail))
            w.job = None
            mark = {"killed": ".", "timeout": "T", "survived": "S", "error": "E"}[status]
            done = len(outcomes)
            print(f"[{done}/{len(mutants)} {time.monotonic() - began:5.0f}s] {mark} {m.path}:{m.line} "
                  f"{m.description}" + ("" if status in ("killed", "timeout") else
                                        f"\n      {m.diff_line(sources[m.path])}\n      {m.id}"), flush=True)
        time.sleep(0.05)
    return _report(outcomes, sources, equivalent, args.report)


def _report(outcomes: list[Outcome], sources, equivalent: dict[str, str], report_path: str) -> int:
    killed = [o for o in outcomes if o.status in ("killed", "timeout")]
    survived = [o for o in outcomes if o.status == "survived" and o.mutant.id not in equivalent]
    judged = [o for o in outcomes if o.status == "survived" and o.mutant.id in equivalent]
    errors = [o for o in outcomes if o.status == "error"]
    total = len(outcomes)
    print("\n==== survivors (a test should fail on each) ====")
    for o in survived:
        print(f"{o.mutant.path}:{o.mutant.line}: {o.mutant.description}: {o.mutant.diff_line(sources[o.mutant.path])}"
              f"\n    {o.mutant.id}")
    if judged:
        print("\n==== survivors judged equivalent (tests/mutation/equivalent.txt) ====")
        for o in judged:
            print(f"{o.mutant.path}:{o.mutant.line}: {o.mutant.diff_line(sources[o.mutant.path])}\n"
                  f"    why: {equivalent[o.mutant.id]}")
    for o in errors:
        print(f"ERROR {o.mutant.path}:{o.mutant.line} {o.mutant.id}\n{o.detail}")
    per_file = {}
    for o in outcomes:
        k, n = per_file.get(o.mutant.path, (0, 0))
        per_file[o.mutant.path] = (k + (o.status in ("killed", "timeout")), n + 1)
    print("\n==== score ====")
    for path, (k, n) in sorted(per_file.items()):
        print(f"{path:34s} {k:4d} / {n:4d} killed")
    scored = total - len(judged)
    print(f"killed {len(killed)} / {total} mutants ({len(survived)} survived, {len(judged)} judged equivalent, "
          f"{len(errors)} errors); score {len(killed)}/{scored} = {len(killed) / max(scored, 1):.1%} "
          "of the non-equivalent mutants")
    Path(report_path).write_text(json.dumps({"outcomes": [
        {"id": o.mutant.id, "path": o.mutant.path, "line": o.mutant.line, "status": o.status,
         "equivalent": o.mutant.id in equivalent, "seconds": round(o.seconds, 2),
         "change": o.mutant.diff_line(sources[o.mutant.path])} for o in outcomes]}, indent=1))
    print(f"report: {report_path}")
    return 0 if not survived and not errors else 1


if __name__ == "__main__":
    sys.exit(main())

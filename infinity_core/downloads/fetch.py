"""Downloading the official model files into a models folder: planned, resumable, verified, contained.

The one download mechanism of the project: `python -m infinity_core download` and the ComfyUI loaders
both call `plan()` then `run()`. Rules:
- files go straight to their folder (`folder_dir(spec.folder)`), never to a cache elsewhere, and never
  outside it: every name (including shard names read from a downloaded index) is resolved and refused
  if it escapes;
- bytes land in `<name>.<etag>.part` beside the final file; an interrupted or cancelled download keeps
  it, and the next run resumes it with a Range request;
- a file gets its final name only after its size and hash match what the hub reports (the LFS sha256,
  or the git blob id of a small file) and what the table in model_files.py requires; a mismatch deletes
  the part and raises, so a half or damaged file never sits under the final name;
- present files are checked (hashed) once and remembered beside them (model_folder.py), so they are
  skipped later, also offline;
- offline (HF_HUB_OFFLINE, or no network) every HEAD fails at once and the error lists each file's URL
  and the folder to put it in by hand.
`progress(Progress)` is called as bytes arrive and while hashing; it may raise to cancel.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import hub
from . import t5_encoder_file as t5file
from ..files.checkpoints import read_weight_map
from ..errors import CheckpointError, DownloadError
from .official import ModelFile, gb
from .records import RECORD, file_digest, is_verified, record, recorded, safe_join

__all__ = ["RECORD", "Progress", "Report", "Step", "describe", "ensure", "file_digest", "is_verified",
           "manual_instructions", "plan", "run", "safe_join"]

log = logging.getLogger(__name__)

FolderDir = Callable[[str], Path]


@dataclass
class Progress:
    done: int
    total: int
    what: str
    phase: str  # "download" | "verify"


@dataclass
class Item:
    """One file to fetch: where it goes, what the hub says, how much is still missing."""

    dest: Path
    remote: hub.Remote
    expected_sha256: str | None = None

    @property
    def size(self) -> int:
        return self.remote.size or 0

    @property
    def part(self) -> Path:
        return self.dest.with_name(f"{self.dest.name}.{(self.remote.etag or 'noetag')[:12]}.part")

    @property
    def missing(self) -> int:
        return max(0, self.size - (self.part.stat().st_size if self.part.exists() else 0))


@dataclass(frozen=True)
class T5Extraction:
    """How the encoder half of flan-t5-xl is built from the full checkpoint's shards: the byte runs to fetch per
    shard, the tensors they hold, the shards' remotes and where the pieces wait (`work`)."""

    work: Path
    selected: dict              # tensor name -> t5_encoder_file.Tensor
    runs: dict                  # shard -> [t5_encoder_file.Run]
    remotes: dict               # shard -> hub remote
    commit: str | None
    shard_sha256: dict          # shard -> sha256 the hub reported


@dataclass
class Step:
    """Everything one official model needs; `present` when it is already there and verified."""

    spec: ModelFile
    dest: Path
    present: bool = False
    items: list[Item] = field(default_factory=list)
    t5: T5Extraction | None = None  # only for the T5 encoder file, built from byte ranges

    @property
    def fetch_bytes(self) -> int:
        runs = [] if self.t5 is None else [r for rs in self.t5.runs.values() for r in rs]
        return sum(i.missing for i in self.items) + sum(_run_missing(self, r) for r in runs)


@dataclass
class Report:
    fetched: int = 0
    seconds: float = 0.0
    paths: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.fetched / 1e6 / self.seconds if self.seconds > 0 else 0.0


def manual_instructions(specs: list[ModelFile], folder_dir: FolderDir) -> str:
    """Each file's URL and the folder to put it in: what to do without a network."""
    lines = []
    for spec in specs:
        target = Path(folder_dir(spec.folder)) / spec.name
        if spec.recipe == "t5_encoder":
            lines.append(f"  {spec.title}: download the folder https://huggingface.co/{spec.repo}/tree/{spec.revision}"
                         f" (config.json, model-*.safetensors, model.safetensors.index.json, tokenizer files) into "
                         f"{Path(folder_dir(spec.folder)) / 'flan-t5-xl'}/  (the loader reads that folder too)")
        elif spec.recipe == "sharded":
            folder = spec.path.rsplit("/", 1)[0]
            lines.append(f"  {spec.title}: every file of https://huggingface.co/{spec.repo}/tree/{spec.revision}/"
                         f"{folder}  ->  {target.parent}/")
        else:
            lines.append(f"  {spec.title}: {spec.url}  ->  {target.parent}/")
    return "\n".join(lines)


def _check_against_table(spec: ModelFile, item: Item) -> None:
    if spec.size is not None and item.remote.size not in (None, spec.size) and item.dest.name == Path(spec.name).name:
        raise DownloadError(f"the hub serves {item.remote.url} with {item.remote.size} bytes, not the {spec.size} "
                            "this version knows", hint="the file changed upstream; update the pack")
    if item.expected_sha256 and item.remote.sha256 not in (None, item.expected_sha256):
        raise DownloadError(f"the hub serves another version of {item.remote.url} (sha256 {item.remote.sha256}, "
                            f"expected {item.expected_sha256})", hint="the file changed upstream; update the pack")


# ---- planning (HEAD requests only, plus the small index/header reads the plan depends on) ---------------------
def _item(dest: Path, repo: str, revision: str, path: str, sha256: str | None = None) -> Item:
    rem = hub.remote(repo, revision, path)
    if rem.size is None:
        raise DownloadError(f"the hub reports no size for {rem.url}", hint="try again later, or download it by hand")
    return Item(dest, rem, sha256)


def _make_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise hub.disk_error(err, folder) from None


def _small_file(item: Item) -> Path:
    """A small remote file (an index) fetched into its part file."""
    _make_dir(item.part.parent)
    hub.fetch(item.remote, item.part, length=item.size)
    return item.part


def _plan_sharded(step: Step) -> None:
    spec = step.spec
    index = _item(step.dest, spec.repo, spec.revision, spec.path, spec.sha256)
    try:
        weight_map = read_weight_map(_small_file(index))
    except CheckpointError:
        index.part.unlink(missing_ok=True)
        raise DownloadError(f"{index.remote.url} is not a shard index (no weight_map)", hint="re-run the download")
    repo_dir = spec.path.rsplit("/", 1)[0] + "/" if "/" in spec.path else ""
    for shard in sorted(set(weight_map.values())):
        dest = safe_join(step.dest.parent, shard)
        step.items.append(_item(dest, spec.repo, spec.revision, repo_dir + shard))
    step.items.append(index)  # last: the index gets its final name only once every shard is in place


def _plan_t5(step: Step) -> None:
    spec = step.spec
    for name in spec.extra_files:  # the tokenizer, beside the encoder file
        step.items.append(_item(safe_join(step.dest.parent, name), spec.repo, spec.revision, name))
    if is_verified(step.dest):  # only a tokenizer file is missing: the encoder file is not built again
        return
    work = step.dest.parent / ".download"
    index = _item(work / "model.safetensors.index.json", spec.repo, spec.revision, spec.path)
    try:
        shards = sorted(set(read_weight_map(_small_file(index)).values()))
    except CheckpointError:
        raise DownloadError(f"{index.remote.url} is not a shard index (no weight_map)", hint="re-run the download")
    selected, runs, remotes = {}, {}, {}
    for shard in shards:
        rem = hub.remote(spec.repo, spec.revision, shard)
        first = Item(safe_join(work, shard + ".len"), rem)
        hub.fetch(rem, first.part, length=8)
        n = t5file.header_length(first.part.read_bytes(), rem.url)
        head = Item(safe_join(work, shard + ".header"), rem)
        hub.fetch(rem, head.part, start=8, length=n)
        wanted = t5file.encoder_tensors(t5file.parse_header(head.part.read_bytes(), rem.url, rem.size))
        selected.update(wanted)
        runs[shard], remotes[shard] = t5file.runs(shard, list(wanted.values())), rem
    t5file.check_complete(selected, index.remote.url)
    step.t5 = T5Extraction(work, selected, runs, remotes, index.remote.commit,
                           {s: r.sha256 for s, r in remotes.items()})


def _run_part(step: Step, run: t5file.Run) -> Path:
    etag = (step.t5.remotes[run.shard].etag or "noetag")[:12]
    return safe_join(step.t5.work, f"{run.shard}.{run.start}-{run.end}.{etag}.part")


def _run_missing(step: Step, run: t5file.Run) -> int:
    part = _run_part(step, run)
    return run.length - (part.stat().st_size if part.exists() else 0)


def plan(specs: list[ModelFile], folder_dir: FolderDir) -> list[Step]:
    """What is there and what must be fetched, asking the hub only about what is missing. Raises a
    DownloadError naming every file's URL and folder when the hub cannot be reached."""
    steps = []
    for spec in specs:
        dest = safe_join(folder_dir(spec.folder), spec.name)
        steps.append(Step(spec, dest, present=is_verified(dest) and _extras_present(spec, dest)))
    todo = [s for s in steps if not s.present]
    try:
        for step in todo:
            if step.spec.recipe == "sharded":
                _plan_sharded(step)
            elif step.spec.recipe == "t5_encoder":
                _plan_t5(step)
            else:
                step.items.append(_item(step.dest, step.spec.repo, step.spec.revision, step.spec.path,
                                        step.spec.sha256))
            for item in step.items:
                _check_against_table(step.spec, item)
    except hub.Unreachable as why:
        raise DownloadError(f"cannot reach the Hugging Face Hub at {hub.endpoint()} ({why}); nothing was downloaded. "
                            "Get the files by hand:\n" + manual_instructions([s.spec for s in todo], folder_dir),
                            hint="connect to the internet (or unset HF_HUB_OFFLINE), or put the files above into "
                                 "those folders yourself") from None
    return steps


def _extras_present(spec: ModelFile, dest: Path) -> bool:
    if spec.recipe == "sharded":
        try:
            shards = set(read_weight_map(dest).values())
        except CheckpointError:
            return False
        return all(is_verified(safe_join(dest.parent, s)) for s in shards)
    return all(is_verified(dest.parent / name) for name in spec.extra_files)


def describe(steps: list[Step]) -> str:
    """One line per model: present, or what will be fetched (exact sizes from the hub)."""
    lines = []
    for s in steps:
        if s.present:
            lines.append(f"  {s.spec.name}: present (verified) in {s.dest.parent}")
        else:
            lines.append(f"  {s.spec.name}: fetch {gb(s.fetch_bytes)} from {s.spec.repo}@{s.spec.revision} "
                         f"into {s.dest.parent}")
    return "\n".join(lines)


# ---- running ------------------------------------------------------------------------------------------------
class _Counter:
    def __init__(self, total: int, progress):
        self.done, self.total, self.progress, self.what, self.phase = 0, total, progress, "", "download"

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(Progress(self.done, self.total, self.what, self.phase))


def _need_space(steps: list[Step]) -> None:
    by_dir: dict[Path, int] = {}
    for s in steps:
        if s.present:
            continue
        out = s.t5.selected.items() if s.t5 else ()
        extra = sum(t5file.out_nbytes(name, t) for name, t in out)
        by_dir[s.dest.parent] = by_dir.get(s.dest.parent, 0) + s.fetch_bytes + extra
    for folder, need in by_dir.items():
        _make_dir(folder)
        free = shutil.disk_usage(folder).free
        if need > free:
            raise DownloadError(f"{folder} has {gb(free)} free but the download needs about {gb(need)}",
                                hint="free disk space or choose another models folder; nothing was written")


def _verify_and_place(item: Item, count: _Counter, spec: ModelFile) -> None:
    part = item.part
    if item.remote.size is not None and part.stat().st_size != item.remote.size:
        part.unlink()
        raise DownloadError(f"{item.remote.url}: got {part.name} of the wrong size", hint="run the download again")
    count.phase, count.what = "verify", item.dest.name
    if item.remote.etag:
        digest = file_digest(part, item.remote.etag, count)
        expected = [e for e in (item.remote.etag, item.expected_sha256) if e and len(e) == len(digest)]
        if any(digest != e for e in expected):
            part.unlink()
            raise DownloadError(f"{item.dest.name}: the downloaded bytes do not match the hub's checksum "
                                f"({digest[:16]}... instead of {expected[0][:16]}...); the damaged file was deleted",
                                path=str(item.dest.parent), hint="run the download again")
    else:
        log.warning("%s: the hub reports no checksum; only its size was checked", item.remote.url)
    os.replace(part, item.dest)
    _record(item, spec)
    count.phase = "download"


def _record(item: Item, spec: ModelFile) -> None:
    """The verified official file, remembered so later runs skip it without hashing."""
    record(item.dest, etag=item.remote.etag, commit=item.remote.commit, url=item.remote.url,
           repo=spec.repo, revision=spec.revision)


def _adopt_existing(item: Item, spec: ModelFile) -> bool:
    """A file already under the final name: keep it if it is the official one, refuse to touch it otherwise."""
    if not item.dest.exists():
        return False
    entry = recorded(item.dest)
    if entry is not None and entry.get("etag") == item.remote.etag:
        return True
    if item.remote.etag and item.dest.stat().st_size == item.size and \
            file_digest(item.dest, item.remote.etag, None) == item.remote.etag:
        _record(item, spec)
        return True
    raise DownloadError(f"{item.dest} exists but is not the official file ({item.remote.url})",
                        hint="it is left untouched: move or rename it, then run the download again")


def _fetch_item(item: Item, spec: ModelFile, count: _Counter) -> int:
    if _adopt_existing(item, spec):
        return 0
    for stale in item.dest.parent.glob(f"{item.dest.name}.*.part"):
        if stale != item.part:  # a part of an older upstream version
            stale.unlink()
    before = item.missing
    count.what = item.dest.name
    _make_dir(item.part.parent)
    hub.fetch(item.remote, item.part, length=item.size, on_bytes=count)
    _verify_and_place(item, count, spec)
    return before


def _build_t5(step: Step, count: _Counter) -> int:
    plan_t5, fetched = step.t5, 0
    run_files = {}
    for shard, runs in plan_t5.runs.items():
        rem = plan_t5.remotes[shard]
        for run in runs:
            part = _run_part(step, run)
            count.what = f"{shard} (encoder bytes {run.start}-{run.end})"
            fetched += _run_missing(step, run)
            hub.fetch(rem, part, start=run.start, length=run.length, on_bytes=count)
            run_files[run] = part
    out_part = step.dest.with_name(step.dest.name + ".part")
    meta = {"source": f"{step.spec.repo}@{plan_t5.commit or step.spec.revision}",
            "shards_sha256": json.dumps(plan_t5.shard_sha256, sort_keys=True),
            "dtype": "fp16; *.wo.weight fp32 (as transformers keeps them)"}
    try:
        t5file.write_encoder_file(out_part, plan_t5.selected, run_files, meta)
        t5file.verify_encoder_file(out_part, plan_t5.selected)
    except DownloadError:
        out_part.unlink(missing_ok=True)
        for part in run_files.values():
            part.unlink(missing_ok=True)
        raise
    os.replace(out_part, step.dest)
    record(step.dest, etag=None, commit=plan_t5.commit, url=step.spec.url, repo=step.spec.repo,
           revision=step.spec.revision, built_from=plan_t5.shard_sha256)
    shutil.rmtree(plan_t5.work, ignore_errors=True)
    return fetched


def run(steps: list[Step], progress: Callable[[Progress], None] | None = None) -> Report:
    """Fetch, verify and place everything the plan lists. Cancelling (an exception from `progress`) keeps the
    part files for the next run."""
    report = Report(skipped=[s.dest for s in steps if s.present])
    todo = [s for s in steps if not s.present]
    if not todo:
        return report
    _need_space(todo)
    total = sum(s.fetch_bytes for s in todo) + sum(i.size for s in todo for i in s.items)
    count = _Counter(total, progress)
    t0 = time.perf_counter()
    try:
        for step in todo:
            for item in step.items:
                report.fetched += _fetch_item(item, step.spec, count)
            if step.t5 is not None:
                report.fetched += _build_t5(step, count)
            log.info("%s ready in %s", step.spec.name, step.dest.parent)
            report.paths.append(step.dest)
    except OSError as err:
        if hub.is_disk_error(err):
            raise hub.disk_error(err, step.dest.parent) from None
        raise
    finally:
        report.seconds = time.perf_counter() - t0
    return report


def ensure(specs: list[ModelFile], folder_dir: FolderDir, progress=None) -> Report:
    """plan() then run(): the official files present and verified afterwards, or an error."""
    return run(plan(specs, folder_dir), progress)

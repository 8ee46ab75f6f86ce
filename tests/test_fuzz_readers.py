"""Property-based fuzzing (hypothesis) of the checkpoint readers and the state-dict inspection.

Inputs: random bytes; truncated and bit-flipped copies of the tiny reference fixtures; random
safetensors headers (huge lengths, bad JSON, offsets past the end, overlapping tensors, unknown
dtypes); mutated state dicts (wrong shapes, dtypes, names); random allowed pickles (nested
dicts/lists of tensors, wrong types); sharded indexes with missing, duplicate and escaping shards.

The property, for every input: each reader entry point (read_file, unwrap_state_dict, detect_kind,
load_transformer, load_tokenizer, describe) ends in one of the project's InfinityErrors with a HINT,
or in a validated model (finite weights that also run); never another exception, within
TIME_BOUND_S seconds (a hang guard, not a speed test) and MEMORY_BOUND bytes of peak-RSS growth,
with no failed allocation anywhere in an error's chain (a header claiming 2^60 bytes allocates
nothing). An index that names a file outside its folder never loads, though that file is valid.

CI: a fixed, derandomised budget of EXAMPLES per property. A longer run with fresh random cases:
    INFINITY_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz_readers.py -q -p no:cacheprovider \
        --hypothesis-show-statistics
"""
from __future__ import annotations

import argparse
import io
import json
import os
import struct
import tempfile
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from infinity_core.files.checkpoints import detect_kind, read_file, unwrap_state_dict
from infinity_core.model.conditioning import TextEmbedding
from infinity_core.files.convert import describe
from infinity_core.errors import InfinityError
from infinity_core.files.loading import load_tokenizer, load_transformer
from infinity_core.model.rope import rope_table
from infinity_core.sampling.sampler import make_generators, sample
from infinity_core.schedules import ScaleSchedule
from infinity_core.model.transformer import InfinityTransformer
from shared_paths import MODEL_A

pytestmark = pytest.mark.skipif(not MODEL_A.is_dir(), reason=f"shared fixtures not found under {MODEL_A}")

LONG_RUN = int(os.environ.get("INFINITY_FUZZ_EXAMPLES", "0"))
EXAMPLES = LONG_RUN or 40
TIME_BOUND_S = 20.0
MEMORY_BOUND = 256 * 2**20
FUZZ = settings(max_examples=EXAMPLES, derandomize=not LONG_RUN, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
                print_blob=True)
FIXTURES = ("infinity_tiny_a.safetensors", "infinity_tiny_a.pth", "vae_tiny_a.safetensors", "vae_tiny_a.pth")


def _fixture_bytes() -> dict[str, bytes]:
    return {name: (MODEL_A / name).read_bytes() for name in FIXTURES} if MODEL_A.is_dir() else {}


DATA = _fixture_bytes()


def _hot_regions(name: str, data: bytes) -> list[tuple[int, int]]:
    """Where flips and cuts matter most: the safetensors header; the zip's pickle and central directory."""
    if name.endswith(".safetensors"):
        return [(0, 8 + struct.unpack("<Q", data[:8])[0])]
    archive = zipfile.ZipFile(io.BytesIO(data))
    pkl = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    directory = min(len(data) - 1, sum(len(i.filename) + 46 + len(i.extra) for i in archive.infolist()))
    return [(pkl.header_offset, pkl.header_offset + 64 + pkl.compress_size), (len(data) - directory, len(data))]


HOT = {name: _hot_regions(name, data) for name, data in DATA.items()}


# ---- the property ----------------------------------------------------------------------------------------
def _peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _no_failed_allocation(err: BaseException) -> None:
    seen = err
    while seen is not None:
        assert not isinstance(seen, MemoryError) and "allocate" not in str(seen).lower(), repr(seen)
        seen = seen.__cause__ or seen.__context__


def _smoke(model) -> None:
    """A loaded model must also run (or refuse with our own error, e.g. NaN from damaged weights)."""
    if isinstance(model, InfinityTransformer):
        text = TextEmbedding.from_single(torch.randn(3, model.config.text_channels))
        try:
            sample(model, text, ScaleSchedule(1.0, "0.06M"), generators=make_generators(0, 1), stop_after=2)
        finally:  # leave no cached RoPE table behind: test_memory's peaks count it as new only when absent
            rope_table.cache_clear()
    else:
        model.decode(torch.randn(1, model.codebook_dim, 2, 2))


def _step(outcomes: list, name: str, fn):
    try:
        result = fn()
    except InfinityError as err:
        assert "HINT:" in str(err), f"{name}: {err}"
        _no_failed_allocation(err)
        outcomes.append((name, type(err).__name__, str(err)))
        return None
    outcomes.append((name, "ok", ""))
    return result


def exercise(path: Path) -> list[tuple[str, str, str]]:
    """Every reader entry point on `path`; returns (step, outcome, message) per step."""
    measured = _peak_reset()
    base, start = _status_bytes("VmRSS"), time.perf_counter()
    outcomes: list = []
    raw = _step(outcomes, "read_file", lambda: read_file(path))
    if raw is not None:
        sd = _step(outcomes, "unwrap_state_dict", lambda: unwrap_state_dict(raw, str(path)))
        if sd is not None:
            assert detect_kind(sd) in ("infinity_transformer", "bitwise_tokenizer", "stable_diffusion_checkpoint",
                                       "t5_text_encoder", "diffusion_model", "unknown")
    for loader in (load_transformer, load_tokenizer):
        model = _step(outcomes, loader.__name__, lambda: loader(path))
        if model is not None:
            assert all(bool(torch.isfinite(t).all()) for t in model.state_dict().values())
            _step(outcomes, "run", lambda: _smoke(model))
    _step(outcomes, "describe", lambda: describe(path))
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_BOUND_S, f"{path.name}: {elapsed:.1f} s"
    if measured:
        growth = _status_bytes("VmHWM") - base
        assert growth < MEMORY_BOUND, f"{path.name}: peak RSS grew by {growth / 2**20:.0f} MiB"
    return outcomes


def exercise_bytes(data: bytes, name: str) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        return exercise(path)


# ---- bytes ------------------------------------------------------------------------------------------------
SUFFIXES = (".safetensors", ".pth", ".bin", ".ckpt", ".pt", ".index.json")
PREFIXES = (b"", b"PK\x03\x04", struct.pack("<Q", 64) + b'{"', b"\x80\x02}q\x00")  # zip, safetensors, pickle


@FUZZ
@given(prefix=st.sampled_from(PREFIXES), data=st.binary(max_size=4096), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(prefix, data, suffix):
    exercise_bytes(prefix + data, "model" + suffix)


@st.composite
def _position(draw, name: str):
    data = DATA[name]
    if draw(st.booleans()):
        lo, hi = draw(st.sampled_from(HOT[name]))
        return draw(st.integers(lo, max(lo, min(hi, len(data)) - 1)))
    return draw(st.integers(0, len(data) - 1))


@FUZZ
@given(st.data())
def test_truncated_fixtures(data):
    name = data.draw(st.sampled_from(FIXTURES))
    cut = data.draw(_position(name))
    exercise_bytes(DATA[name][:cut], name)


@FUZZ
@given(st.data())
def test_bit_flipped_fixtures(data):
    name = data.draw(st.sampled_from(FIXTURES))
    damaged = bytearray(DATA[name])
    for _ in range(data.draw(st.integers(1, 16))):
        damaged[data.draw(_position(name))] ^= 1 << data.draw(st.integers(0, 7))
    exercise_bytes(bytes(damaged), name)


# ---- safetensors headers ------------------------------------------------------------------------------------
REAL_KEYS = sorted({k for name in FIXTURES if name.endswith(".safetensors")
                    for k in json.loads(DATA[name][8:8 + struct.unpack("<Q", DATA[name][:8])[0]])} - {"__metadata__"}) \
    if DATA else ["x"]
DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "C64", "I64", "I32",
          "I16", "I8", "U8", "U16", "U32", "U64", "BOOL", "Q7", "", "f32")
SIZES = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
HUGE = st.sampled_from([2**31, 2**32 + 1, 2**40, 2**60, 2**63 - 1, 2**64 - 1])
NAMES = st.sampled_from(REAL_KEYS) | st.text(max_size=24)


@st.composite
def _entry(draw, offset: int):
    """One tensor entry: consistent (so that safetensors accepts it) or not."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 6) | st.integers(-3, 2**20) | HUGE, max_size=4))
    if draw(st.booleans()) and dtype in SIZES and all(0 <= s <= 6 for s in shape):
        n = SIZES[dtype]
        for s in shape:
            n *= s
        return {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}, offset + n
    offsets = draw(st.lists(st.integers(-1, 2**12) | HUGE, min_size=0, max_size=3))
    junk = draw(st.sampled_from([None, 5, "x", [1], {"dtype": 3}]))
    entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    return (entry if draw(st.integers(0, 9)) else junk), offset + draw(st.integers(0, 64))


@st.composite
def safetensors_files(draw) -> bytes:
    header, offset = {}, 0
    for _ in range(draw(st.integers(0, 8))):
        entry, offset = draw(_entry(offset))
        header[draw(NAMES)] = entry
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.sampled_from([{"format": "pt"}, {"a": 1}, [], "x", None]))
    text = json.dumps(header).encode()
    edit = draw(st.sampled_from(["none", "truncate", "garbage", "pad"]))
    if edit == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif edit == "garbage":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:]
    elif edit == "pad":
        text += b" " * draw(st.integers(1, 16))
    length = draw(st.sampled_from(["exact", "exact", "off", "huge"]))
    claimed = {"exact": len(text), "off": max(0, len(text) + draw(st.integers(-8, 8))),
               "huge": draw(HUGE)}[length]
    body = draw(st.binary(min_size=0, max_size=64)) if draw(st.booleans()) else b"\x00" * offset
    return struct.pack("<Q", claimed % 2**64) + text + body


@FUZZ
@given(safetensors_files())
def test_random_safetensors_headers(data):
    exercise_bytes(data, "model.safetensors")


# ---- state dicts and pickles -----------------------------------------------------------------------------
FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
DTYPE_CHOICES = FLOATS + (torch.int64, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn,
                          torch.float8_e8m0fnu)


def _tensor(dtype, shape, kind):
    if kind == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    t = torch.arange(max(1, torch.Size(shape).numel()), dtype=torch.float32).remainder_(7).sub_(3)[
        :torch.Size(shape).numel()].reshape(shape)
    t = t.to(dtype) if dtype not in (torch.complex64, torch.float8_e8m0fnu) else t.abs().to(dtype)
    if kind == "nan" and dtype in FLOATS and t.numel():
        t.view(-1)[0] = float("nan")
    if kind == "sparse" and dtype in FLOATS and t.ndim == 2:
        t = t.to_sparse()
    if kind == "strided" and t.ndim >= 1:
        t = t.repeat_interleave(2, dim=0)[::2]
    return t


TENSORS = st.builds(_tensor, st.sampled_from(DTYPE_CHOICES), st.lists(st.integers(0, 4), max_size=3),
                    st.sampled_from(["plain", "plain", "meta", "nan", "sparse", "strided"]))
WRAPPERS = ("trainer", "gpt_fsdp", "vae", "state_dict", "model", "module", "args")
LEAVES = TENSORS | st.integers() | st.floats() | st.text(max_size=6) | st.none() | st.booleans() \
    | st.builds(argparse.Namespace, model=st.text(max_size=4))
KEYS = st.sampled_from(WRAPPERS) | NAMES | st.integers(-2, 2)
TREES = st.recursive(LEAVES, lambda kids: st.lists(kids, max_size=3) | st.tuples(kids, kids)
                     | st.dictionaries(KEYS, kids, max_size=4)
                     | st.dictionaries(KEYS, kids, max_size=3).map(OrderedDict),
                     max_leaves=12)


@FUZZ
@given(TREES, st.sampled_from([".pth", ".bin", ".ckpt"]))
def test_random_allowed_pickles(tree, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model{suffix}"
        torch.save(tree, path)
        exercise(path)


def _fixture_state_dict(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load
    return load(DATA[name])


@st.composite
def mutated_state_dicts(draw):
    """A real state dict with a few semantic mutations: the file is well-formed, its content is not."""
    sd = dict(_fixture_state_dict(draw(st.sampled_from(["infinity_tiny_a.safetensors", "vae_tiny_a.safetensors"]))))
    keys = sorted(sd)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(keys))
        if key not in sd:
            continue
        how = draw(st.sampled_from(["drop", "rename", "reshape", "slice", "dtype", "scalar", "empty", "stray"]))
        t = sd[key]
        if how == "drop":
            del sd[key]
        elif how == "rename":
            sd[draw(NAMES)] = sd.pop(key)
        elif how == "reshape" and t.numel() > 1:
            sd[key] = t.reshape(-1, *([1] * draw(st.integers(0, 2))))
        elif how == "slice" and t.ndim:
            sd[key] = t[: draw(st.integers(0, max(0, t.shape[0] - 1)))].clone()
        elif how == "dtype":
            sd[key] = t.to(draw(st.sampled_from(DTYPE_CHOICES[:8])))
        elif how == "scalar":
            sd[key] = t.flatten()[0].clone() if t.numel() else torch.zeros(())
        elif how == "empty":
            sd[key] = torch.zeros(0, *t.shape[1:])
        elif how == "stray":
            sd[key.replace(".0.", f".{draw(st.sampled_from([7, 99, 10**6]))}.", 1)] = t.clone()
    return sd


@FUZZ
@given(mutated_state_dicts(), st.sampled_from([".safetensors", ".pth"]))
def test_mutated_state_dicts(sd, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model{suffix}"
        if suffix == ".pth":
            torch.save(sd, path)
        else:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        exercise(path)


# ---- sharded indexes ---------------------------------------------------------------------------------------
INDEX_MUTATIONS = ("drop_shard", "dotdot", "absolute", "nested_dotdot", "windows", "symlink_out", "symlink_loop",
                   "dup_spelling", "dup_tensor", "wrong_shard", "unlisted", "junk_map", "junk_value", "pth_shard",
                   "odd_suffix", "self", "directory", "random_name")
ESCAPES = {"dotdot", "absolute", "nested_dotdot", "symlink_out"}


def _write_index_case(root: Path, mutations: list[str], draw) -> tuple[Path, bool]:
    """A sharded copy of the tiny transformer in root/weights, mutated; plus a valid shard outside the folder
    that would complete the model if it were read. Returns (index path, whether the index escapes)."""
    sd = _fixture_state_dict("infinity_tiny_a.safetensors")
    folder, keys = root / "weights", sorted(sd)
    folder.mkdir()
    a, b = keys[: len(keys) // 2], keys[len(keys) // 2:]
    save_file({k: sd[k] for k in a}, str(folder / "a.safetensors"))
    save_file({k: sd[k] for k in b}, str(folder / "b.safetensors"))
    save_file({k: sd[k] for k in b}, str(root / "outside.safetensors"))
    weight_map: object = {**{k: "a.safetensors" for k in a}, **{k: "b.safetensors" for k in b}}
    names = {"dotdot": "../outside.safetensors", "absolute": str(root / "outside.safetensors"),
             "nested_dotdot": "sub/../../outside.safetensors", "windows": "C:\\outside.safetensors",
             "odd_suffix": "notes.txt", "self": "model.safetensors.index.json", "directory": ".",
             "random_name": draw(st.text(max_size=12))}
    for how in mutations:
        if not isinstance(weight_map, dict):
            break
        if how in names:
            for k in b:
                weight_map[k] = names[how]
        elif how == "drop_shard":
            (folder / "a.safetensors").unlink(missing_ok=True)
        elif how == "symlink_out":
            (folder / "b.safetensors").unlink(missing_ok=True)
            (folder / "b.safetensors").symlink_to(root / "outside.safetensors")
        elif how == "symlink_loop":
            if not (folder / "loop.safetensors").is_symlink():
                (folder / "loop.safetensors").symlink_to(folder / "loop.safetensors")
            weight_map[b[0]] = "loop.safetensors"
        elif how == "dup_spelling":
            weight_map[a[0]] = "./a.safetensors"
        elif how == "dup_tensor":
            save_file({**{k: sd[k] for k in b}, a[0]: sd[a[0]]}, str(folder / "c.safetensors"))
            weight_map[b[0]] = "c.safetensors"
        elif how == "wrong_shard":
            weight_map[a[0]] = "b.safetensors"
        elif how == "unlisted":
            weight_map.pop(a[0], None)
        elif how == "junk_map":
            weight_map = draw(st.sampled_from([[], "x", 5, None, {"k": ["a"]}, {}]))
        elif how == "junk_value":
            weight_map[a[0]] = draw(st.sampled_from([5, None, ["a.safetensors"], {"f": 1}]))
        elif how == "pth_shard":
            torch.save({k: sd[k] for k in a}, folder / "a.pth")
            weight_map.update({k: "a.pth" for k in a})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    listed = {v for v in weight_map.values() if isinstance(v, str)} if isinstance(weight_map, dict) else set()
    escapes = bool(listed & {names[how] for how in ESCAPES if how in names}) or (
        "b.safetensors" in listed and (folder / "b.safetensors").is_symlink())
    return index, escapes


@FUZZ
@given(st.lists(st.sampled_from(INDEX_MUTATIONS), max_size=4), st.booleans(), st.data())
def test_sharded_indexes(mutations, via_folder, data):
    with tempfile.TemporaryDirectory() as tmp:
        index, escapes = _write_index_case(Path(tmp), mutations, data.draw)
        outcomes = exercise(index.parent if via_folder else index)
        if escapes:  # the outside file would complete the model: it must never have been read
            assert all(result != "ok" for step, result, _ in outcomes if step in ("read_file", "load_transformer")), \
                outcomes


def test_the_untouched_fixtures_load():
    """The oracle's positive side: real files pass every step they should."""
    for name in FIXTURES:
        outcomes = {step: result for step, result, _ in exercise_bytes(DATA[name], name)}
        loader = "load_transformer" if name.startswith("infinity") else "load_tokenizer"
        assert outcomes["read_file"] == outcomes[loader] == outcomes["run"] == outcomes["describe"] == "ok", outcomes

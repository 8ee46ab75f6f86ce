"""Time the reference's sampling loop (FoundationVision/Infinity `Infinity.autoregressive_infer_cfg`)
on the same weights, inputs and machine as `bench_sampler.py`, for a side-by-side comparison.

    python bench/reference_timing.py --reference-repo PATH [--sizes tiny,layer12,2b] [--budgets 0.06M,0.25M]
    python bench/bench_sampler.py --reference-repo PATH      # both, case by case, in one table

PATH is a local checkout of https://github.com/FoundationVision/Infinity that YOU provide; nothing of it
is copied into this repository. Only `infinity/` of it is imported. The reference needs CUDA-only and
heavy packages; CPU stand-ins are installed into `sys.modules` at runtime, in this process only:

- `flash_attn`: a module (not a package, so `flash_attn.ops` is absent and the reference falls back to
  its pure-torch norms) whose `flash_attn_varlen_kvpacked_func` runs `F.scaled_dot_product_attention`
  per packed sequence in float32 and returns the input dtype (bf16: the reference casts q/kv to bf16
  before calling it), and whose `flash_attn_func` is unused (customized_flash_attn=False);
- `timm.models.register_model` (identity), `timm.models.layers.DropPath` (identity in eval),
  `timm.loss.SoftTargetCrossEntropy` (placeholder); empty `torchvision`; `pytz.timezone` (fixed UTC+8);
- `TORCHDYNAMO_DISABLE=1`: the `torch.compile`d fused AdaLN of `fused_op.py` runs eagerly;
- on CPU, `Tensor.cuda` / `Module.cuda` are no-ops.

The model is built as `tools/run_infinity.py load_infinity` builds it (shared_aln, fused_norm,
pad_to_multiplier 128, rope2d_each_sa_layer 1, rope2d_normalized_by_hw 2, inference_mode, block chunks
as in the released layout), with the constructor's random init skipped (`reset_parameters` no-op) and
then `load_state_dict(..., assign=True)` of OUR random weights written in the released layout
(`infinity_core.files.random_models.transformer_file_state_dict`), or the tiny fixture file itself. The
bits -> codes step uses a stand-in VAE exposing `quantizer.lfq.indices_to_codes(bits, 'bit_label')`
(the reference's BSQ formula) and `quantizer.z_interplote_up = 'trilinear'` (the real one needs einops
and a full tokenizer). The call is `gen_one_img`'s, minus the VAE decode (`ret_img=False`): B=1,
cfg 3 (or the cfg list of the mode: `--modes`, common.MODES), tau 0.5, top_k 0, top_p 0.97,
cfg_insertion_layer [0], g_seed 0.

The worker times the reference alone once per distinct cfg list, then, per mode, alternates it with our
sampler in that mode (same weights, seed, cfg list) and reports the paired speed-up and how many sampled
bits agree (not all: the reference rounds cross-attention inputs to bf16; pruning changes the late scales).
"""
from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # before torch is imported (common imports it)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import flops as flop_count  # noqa: E402
import memory  # noqa: E402
import timing  # noqa: E402
from common import torch  # noqa: E402

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent


# ---- CPU stand-ins ----------------------------------------------------------------------------------
def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                                    dropout_p=0.0, softmax_scale=None, causal=False, **_):
    """q `[Nq, H, c]`, kv `[Nk, 2, H, c]`, packed by cu_seqlens; float32 SDPA per sequence, returns q.dtype."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    out = q.new_empty(q.shape)
    for b in range(len(cq) - 1):
        qb = q[cq[b]:cq[b + 1]].transpose(0, 1).float()
        kb, vb = kv[ck[b]:ck[b + 1]].float().unbind(1)
        ob = F.scaled_dot_product_attention(qb, kb.transpose(0, 1), vb.transpose(0, 1), scale=softmax_scale,
                                            is_causal=causal)
        out[cq[b]:cq[b + 1]] = ob.transpose(0, 1).to(q.dtype)
    return out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    """`[B, L, H, c]` layout; unused by the inference path (customized_flash_attn=False)."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale,
                                       is_causal=causal)
    return o.transpose(1, 2)


class DropPath(nn.Module):
    def __init__(self, drop_prob=0.0, *args, **kwargs):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return x


def install_stand_ins(device: str) -> list[str]:
    installed = []
    if "flash_attn" not in sys.modules:
        _module("flash_attn", flash_attn_func=flash_attn_func,
                flash_attn_varlen_kvpacked_func=flash_attn_varlen_kvpacked_func)
        installed.append("flash_attn (SDPA varlen stand-in)")
    try:
        import timm  # noqa: F401
    except Exception:  # not installed, or broken by a CUDA-only torchvision
        for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            del sys.modules[name]
        timm = _module("timm")
        timm.models = _module("timm.models", register_model=lambda fn: fn)
        timm.models.layers = _module("timm.models.layers", DropPath=DropPath, drop_path=lambda x, *a, **k: x)
        timm.loss = _module("timm.loss", SoftTargetCrossEntropy=type("SoftTargetCrossEntropy", (nn.Module,), {}))
        installed.append("timm (register_model, DropPath, SoftTargetCrossEntropy)")
    for name in ("torchvision", "pytz"):
        try:
            __import__(name)
        except Exception:
            if name == "pytz":
                _module("pytz", timezone=lambda _name: datetime.timezone(datetime.timedelta(hours=8)))
            else:
                _module(name)
            installed.append(name)
    if torch.device(device).type == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self
        nn.Module.cuda = lambda self, *a, **k: self
        installed.append(".cuda() no-op")
    try:
        import importlib
        importlib.import_module("torch._dynamo").config.disable = True
    except Exception:
        pass
    return installed


class _LFQStandIn(nn.Module):
    """`BSQ.indices_to_codes(..., label_type='bit_label')` of the reference (codebook scale 1/sqrt(d))."""

    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("mask", 2 ** torch.arange(d - 1, -1, -1))
        self.codebook_scale = 1 / math.sqrt(d)
        self.record = None  # a list: the sampled bits of every scale are appended (agreement check)

    def indices_to_codes(self, indices, label_type="int_label", project_out=True):
        assert label_type == "bit_label"
        if self.record is not None:
            self.record.append(indices)
        bits = indices.unsqueeze(-2)                                   # [..., 1, d]
        codes = bits * self.codebook_scale * 2 - self.codebook_scale   # bits_to_codes
        codes = F.normalize(codes, dim=-1).flatten(-2)                 # l2norm; '... c d -> ... (c d)'
        return codes.movedim(-1, 1)                                    # 'b ... d -> b d ...'


class VAEStandIn(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.embed_dim, self.vocab_size = d, 2 ** d
        self.quantizer = nn.Module()
        self.quantizer.lfq = _LFQStandIn(d)
        self.quantizer.z_interplote_up = "trilinear"


@contextlib.contextmanager
def no_init():
    """Skip the constructor's random init of the big layers (their tensors are replaced right after)."""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


# ---- worker -------------------------------------------------------------------------------------------
def reference_state_dict(size: str, dtype):
    """(our model or None, released-layout state dict, source) with the benchmark's weights."""
    from infinity_core.files.random_models import random_transformer, transformer_file_state_dict
    fixture = common.tiny_fixture_path() if size == "tiny" else None
    if fixture is not None:
        from infinity_core.files.checkpoints import read_file
        from infinity_core.files.loading import load_transformer
        return load_transformer(fixture), read_file(fixture), f"fixture {fixture.name}"
    ours = random_transformer(common.size_config(size), seed=common.SEED, dtype=torch.float32)
    return ours, transformer_file_state_dict(ours), f"random weights (seed {common.SEED})"


def blocks_per_chunk(sd) -> int:
    js = {int(k.split(".")[3]) for k in sd if k.startswith("block_chunks.0.module.")}
    return max(js) + 1


def run_case(spec: dict, repo: str) -> dict:
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, dtype = spec["device"], common.DTYPES[spec["dtype"]]
    is_cuda = torch.device(device).type == "cuda"
    if dtype != torch.float32 and not is_cuda:
        raise SystemExit("the reference's bf16 path (blocks in bf16 under CUDA autocast) needs --device cuda")
    stand_ins = install_stand_ins(device)
    sys.path.insert(0, str(Path(repo).resolve()))
    from infinity.models.infinity import Infinity  # noqa: E402  (the user's checkout)
    imports_rss = memory.current_rss()
    config = common.size_config(spec["size"])
    peak = flop_count.matmul_peak(dtype, device, config)
    baseline_rss = memory.current_rss()  # after imports and a first matmul (BLAS/OpenMP warmed up)
    schedule = common.schedule_for(spec["budget"])

    t0 = time.perf_counter()
    ours, sd, source = reference_state_dict(spec["size"], dtype)
    per_chunk = blocks_per_chunk(sd)
    vae = VAEStandIn(config.bits_per_token)
    with no_init(), contextlib.redirect_stdout(sys.stderr):
        ref = Infinity(
            vae_local=vae, text_channels=config.text_channels, text_maxlen=config.text_maxlen,
            shared_aln=True, raw_scale_schedule=None, checkpointing="full-block", customized_flash_attn=False,
            fused_norm=True, pad_to_multiplier=128, use_flex_attn=False, add_lvl_embeding_only_first_block=1,
            use_bit_label=1, rope2d_each_sa_layer=1, rope2d_normalized_by_hw=2, pn=spec["budget"],
            apply_spatial_patchify=0, inference_mode=True, train_h_div_w_list=[1.0],
            depth=config.depth, embed_dim=config.embed_dim, num_heads=config.num_heads, drop_path_rate=0.1,
            mlp_ratio=4, block_chunks=config.depth // per_chunk)
    result = ref.load_state_dict(dict(sd), strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith("zero_k_bias")]
    if missing or result.unexpected_keys:
        raise SystemExit(f"weights do not fit the reference model: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    ref = ref.to(device).eval().requires_grad_(False)
    ref.rng = torch.Generator(device=device)
    if dtype != torch.float32:  # load_infinity(bf16=True)
        for block in ref.unregistered_blocks:
            block.to(dtype)
    weights = memory.tensor_bytes(ref.state_dict().values())
    del sd
    # `ours` stays: its tensors ARE the reference's weights (assign=True), so it costs no memory
    build_s = time.perf_counter() - t0

    feats = common.text_features(config).to(device)
    T = feats.shape[0]
    text = (feats, [T], torch.tensor([0, T], dtype=torch.int32, device=device), T)
    sched = [(1, h, w) for h, w in schedule.grids]
    n = len(sched)
    autocast = torch.autocast("cuda", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def run(cfg_list):
        with torch.no_grad(), autocast:
            return ref.autoregressive_infer_cfg(
                vae=vae, scale_schedule=sched, label_B_or_BLT=text, g_seed=0, B=1, negative_label_B_or_BLT=None,
                force_gt_Bhw=None, cfg_sc=3, cfg_list=list(cfg_list),
                tau_list=[common.SAMPLER["tau"]] * n, top_k=common.SAMPLER["top_k"], top_p=common.SAMPLER["top_p"],
                returns_vemb=1, ratio_Bl1=None, gumbel=0, norm_cfg=False, cfg_exp_k=0.0, cfg_insertion_layer=[0],
                vae_type=config.bits_per_token, softmax_merge_topk=-1, ret_img=False, trunk_scale=1000, gt_leak=0,
                gt_ls_Bl=None, inference_mode=True, sampling_per_bits=1)

    base = dict(impl="reference", size=spec["size"], budget=spec["budget"], device=device, dtype=spec["dtype"],
                source=source, reference_repo=str(repo), reference_commit=_repo_commit(repo), stand_ins=stand_ins,
                params=sum(p.numel() for p in ref.parameters()), build_s=build_s)
    measured, per_mode = {}, []
    gen_device = device if is_cuda else "cpu"
    ours = ours.to(device=device, dtype=dtype)  # CPU fp32: a no-op, the storage stays shared
    ours_text = common.text_embedding(config)
    for mode in spec.get("modes", ["exact"]):
        settings, policy, cfg_list = common.mode_setup(mode, config, schedule)
        key = tuple(cfg_list)
        if key not in measured:  # the reference alone, once per cfg list (it cannot prune)
            print(f"[reference] cfg list {list(key)} ...", file=sys.stderr, flush=True)
            measured[key] = timing.measure(lambda: run(key), spec=spec, config=config, schedule=schedule,
                                           text_tokens=T, weights_bytes=weights, baseline_rss=baseline_rss,
                                           imports_rss=imports_rss, peak_before=peak)
        out = dict(base, mode=mode, cfg_list=list(key), **measured[key])
        if spec.get("paired", True):
            # ours (this mode) and the reference (same cfg list) alternately, in this process, same weight tensors
            from infinity_core.sampling.sampler import make_generators, sample
            last = {}

            def run_ours():
                last["ours"] = sample(ours, ours_text, schedule, generators=make_generators(0, 1, device=gen_device),
                                      settings=settings, device=device, compute_dtype=dtype, pruning=policy)

            def run_ref():
                vae.quantizer.lfq.record = []  # the reference returns no bits on this path: the stand-in records them
                run(key)
                last["ref"] = vae.quantizer.lfq.record

            print(f"[reference] paired with ours, {mode} ...", file=sys.stderr, flush=True)
            # at least `pairs` pairs however long they take: one pair is no measurement on a busy host
            # (--quick: no warm-up pair; the reference is warm from its own timing, ours pays its first run)
            pair = timing.paired_runs(run_ours, run_ref, device, spec.get("pairs", spec["repeats"]), spec["min_time"],
                                      float("inf"), warmup=0 if spec.get("quick") else 1)
            out["paired"] = dict(pair, speedup_median=pair["ratio_median"],
                                 note="t_reference / t_ours per alternating pair, same process and weights")
            out["bits_agreement"] = bits_agreement(last["ref"], last["ours"], schedule)
        per_mode.append(out)
    return dict(per_mode=per_mode)


def bits_agreement(ref_bits, ours_result, schedule) -> dict:
    """Fraction of sampled bits that our sampler drew identically (same weights, text and seed)."""
    from infinity_core.model.quantizer import token_bits_to_vae
    per_scale = []
    for si, (rb, ob) in enumerate(zip(ref_bits, ours_result.bits)):
        ob = token_bits_to_vae(ob, schedule.grids[si], False)
        per_scale.append(float((rb.to(ob.device).long() == ob.long()).float().mean()))
    return dict(per_scale=per_scale, first_scale_all_equal=bool(per_scale) and per_scale[0] == 1.0)


def _repo_commit(repo: str) -> str | None:
    import subprocess
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference-repo", required=True, help="local checkout of FoundationVision/Infinity")
    p.add_argument("--sizes", default="tiny,layer12,2b")
    p.add_argument("--budgets", default="0.06M,0.25M")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=list(common.DTYPES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--max-time", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--include-slow", action="store_true", help="also run 2b at 0.25M and above")
    p.add_argument("--quick", action="store_true", help="skip the extra untimed run that measures peak tensors")
    p.add_argument("--pairs", type=int, default=0, help="minimum alternating ours/reference pairs (default: --repeats)")
    p.add_argument("--modes", default="exact", help="comma list of: " + ",".join(common.MODES))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (Path(args.reference_repo) / "infinity" / "models" / "infinity.py").exists():
        p.error(f"{args.reference_repo} does not look like a FoundationVision/Infinity checkout "
                "(no infinity/models/infinity.py)")
    if args.worker:
        common.emit_result(run_case(json.loads(args.worker), args.reference_repo))
        return 0

    from bench_sampler import SLOW_CASES, print_table
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results = []
    for size in args.sizes.split(","):
        for budget in args.budgets.split(","):
            if (size, budget) in SLOW_CASES and not args.include_slow:
                continue
            spec = dict(size=size, budget=budget, device=args.device, dtype=args.dtype, repeats=args.repeats,
                        min_time=args.min_time, max_time=args.max_time, threads=args.threads,
                        quick=args.quick, pairs=args.pairs or args.repeats)
            print(f"[reference] {size} {budget} ...", file=sys.stderr, flush=True)
            r = common.run_worker([str(HERE / "reference_timing.py"), "--reference-repo", args.reference_repo,
                                   "--worker", json.dumps(dict(spec, modes=modes))], env={"TORCHDYNAMO_DISABLE": "1"})
            if "error" in r:
                print(r.get("output_tail", ""), file=sys.stderr)
            results += r.get("per_mode") or [dict(r, impl="reference", size=size, budget=budget, mode=m) for m in modes]
    print_table(results)
    for r in results:
        if r.get("paired"):
            print(f"{r['size']} {r['budget']} {r['mode']}: paired t_reference / t_ours = "
                  f"{r['paired']['speedup_median']:.3f} "
                  f"(CPU time: {r['paired'].get('cpu_ratio_median', float('nan')):.3f}) "
                  f"(ours {r['paired']['median_a']:.4g} s, reference {r['paired']['median_b']:.4g} s)")
        if r.get("bits_agreement"):
            print(f"{r['size']} {r['budget']} {r['mode']}: bits equal to ours per scale "
                  f"{[round(x, 4) for x in r['bits_agreement']['per_scale']]}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

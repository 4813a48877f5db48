"""GPU kernel sweep: hearth's Triton one-row products (hearth/kernels/triton_decode.py) per launch configuration,
against cuBLAS (F.linear) on the same shapes, and the decode attention kernel against SDPA over a masked cache.

    python bench/gpu_kernels.py [--quick]

The weight shapes of the Llama-3.2-1B and Llama-3.1-8B decode step at batch 1. Each product is timed as a CUDA
graph of calls over enough distinct weight copies that none is still in L2 when it comes round again (the model
reads every matrix once per token), median of several replays; bandwidth = weight bytes / time, and its share of
the device-to-device copy rate. Prints the best configuration per shape: what `gemv_config` in
hearth/fast/gpu_decode.py encodes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from gpu import copy_bandwidth  # bench/gpu.py: the copy rate both scripts compare against

from hearth.fast.gpu_decode import GEMV, Attend, gemv_config

SHAPES = {  # name: (rows, cols); each with the prologue/epilogue the step gives it (ROLES)
    "1b qkv": (3072, 2048), "1b o": (2048, 2048), "1b gate|up": (16384, 2048), "1b down": (2048, 8192),
    "1b output": (128256, 2048),
    "8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b gate|up": (28672, 4096), "8b down": (4096, 14336),
    "8b output": (128256, 4096),
}
ROLES = {"qkv": dict(norm=True), "o": dict(residual=True), "gate|up": dict(norm=True, swiglu=True),
         "down": dict(residual=True), "output": dict(norm=True, fp32=True)}


def graph_time(calls, reps: int = 7) -> float:
    """Median seconds per call of `calls` (a list of zero-argument launches) replayed as one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    g.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / len(calls))
    return sorted(times)[len(times) // 2]


def weights(n: int, k: int, copies_bytes: float = 1.2e9) -> list[torch.Tensor]:
    copies = max(2, min(64, math.ceil(copies_bytes / (n * k * 2))))
    return [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]


@torch.inference_mode()
def sweep_gemv(quick: bool, bw: float) -> list[dict]:
    rows = []
    grid = dict(BLOCK_N=[1, 2, 4, 8], BLOCK_K=[512, 1024, 2048], num_warps=[2, 4, 8])
    if quick:
        grid = dict(BLOCK_N=[2, 4, 8], BLOCK_K=[512, 1024], num_warps=[4, 8])
    from hearth.model.llama import RMSNorm

    for name, (n, k) in SHAPES.items():
        role = ROLES[name.split()[1]]
        swiglu = role.get("swiglu", False)
        ws = weights(n, k)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(1, n // 2 if swiglu else n, device="cuda",
                          dtype=torch.float32 if role.get("fp32") else torch.bfloat16)
        kw = dict(swiglu=swiglu, norm=RMSNorm(k, 1e-5).cuda().to(torch.bfloat16) if role.get("norm") else None,
                  residual=out if role.get("residual") else None)
        nbytes = n * k * 2
        full = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
        t_cublas = graph_time([lambda w=w: torch.mm(x, w.t(), out=full)
                               for w in ws])
        res = dict(shape=name, n=n, k=k, MB=nbytes / 1e6, cublas_us=t_cublas * 1e6, cublas_pct=100 * nbytes / t_cublas / bw)
        best, res["all"] = None, []
        for bn, bk, nw in itertools.product(grid["BLOCK_N"], grid["BLOCK_K"], grid["num_warps"]):
            if bk > k:
                continue
            cfg = dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)
            try:
                t = graph_time([GEMV(w, x, out, config=cfg, **kw) for w in ws])
            except Exception as e:  # noqa: BLE001 (a configuration that does not compile, out of registers: skip it)
                print(f"  {name} {cfg}: {type(e).__name__}")
                continue
            res["all"].append((bn, bk, nw, round(100 * nbytes / t / bw, 1)))
            if best is None or t < best[0]:
                best = (t, cfg)
        t_def = graph_time([GEMV(w, x, out, **kw) for w in ws])
        t_nopdl = graph_time([GEMV(w, x, out, pdl=False, **kw) for w in ws])
        res.update(best_us=best[0] * 1e6, best_pct=100 * nbytes / best[0] / bw, best_cfg=best[1],
                   default_us=t_def * 1e6, default_pct=100 * nbytes / t_def / bw,
                   default_cfg=gemv_config(out.shape[1], k, swiglu), nopdl_pct=100 * nbytes / t_nopdl / bw)
        print(f"{name:11s} {nbytes / 1e6:7.1f} MB  cuBLAS {res['cublas_pct']:5.1f}%  best {res['best_pct']:5.1f}% "
              f"{best[1]}  default {res['default_pct']:5.1f}% (without PDL {res['nopdl_pct']:5.1f}%)", flush=True)
        rows.append(res)
        del ws
        torch.cuda.empty_cache()
    return rows


@torch.inference_mode()
def attention(bw: float) -> list[dict]:
    """A layer's attention at several filled lengths, for the 1B (head_dim 64) and 8B (128) shapes (32 query heads,
    8 kv heads): hearth's kernel (RoPE + cache write + attention over the filled part, in ranges of `chunk`
    positions merged by a second kernel) per chunk size, vs SDPA over the whole masked cache (the compiled step's
    way; RoPE and the cache write not counted there)."""
    rows = []
    h, kvh, layers = 32, 8, 16
    for hd in (64, 128):
        for cap, filled in [(256, 200), (1024, 900), (4096, 4000), (16384, 16000)]:
            kc = torch.randn(layers, kvh, cap, hd, device="cuda", dtype=torch.bfloat16)
            vc = torch.randn_like(kc)
            qkv = torch.randn(1, (h + 2 * kvh) * hd, device="cuda", dtype=torch.bfloat16)
            out = torch.empty(1, h * hd, device="cuda", dtype=torch.bfloat16)
            pos = torch.tensor([filled], device="cuda")
            inv = torch.rand(hd // 2, device="cuda")
            q = torch.randn(1, kvh, h // kvh, hd, device="cuda", dtype=torch.bfloat16)
            mask = (torch.arange(cap, device="cuda") <= filled).view(1, 1, 1, -1)
            t_sdpa = graph_time([lambda i=i: F.scaled_dot_product_attention(q, kc[i][None], vc[i][None], attn_mask=mask)
                                 for i in range(layers)])
            r = dict(head_dim=hd, cache=cap, filled=filled, sdpa_us=t_sdpa * 1e6, chunks={})
            for chunk in [None, 64, 128, 256, 512, 1024]:
                if chunk and chunk > cap:
                    continue
                t = graph_time([Attend(qkv, kc[i], vc[i], out, pos, inv, h, kvh, hd, chunk=chunk) for i in range(layers)])
                r["chunks"][str(chunk or "default")] = round(t * 1e6, 2)
            print(f"attention hd {hd} cache {cap:6d} filled {filled:6d}: hearth us by chunk {r['chunks']}  "
                  f"SDPA masked {t_sdpa * 1e6:7.1f} us", flush=True)
            rows.append(r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller grid of configurations")
    args = ap.parse_args()
    bw = copy_bandwidth()
    print(f"GPU {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s, torch {torch.__version__}", flush=True)
    g = sweep_gemv(args.quick, bw)
    a = attention(bw)
    print("\n| shape | MB | cuBLAS % | hearth default % | best % | best config |")
    print("|---|---|---|---|---|---|")
    for r in g:
        print(f"| {r['shape']} | {r['MB']:.0f} | {r['cublas_pct']:.0f} | {r['default_pct']:.0f} | {r['best_pct']:.0f} "
              f"| {r['best_cfg']} |")
    out = Path(__file__).parent / "results" / f"gpu-kernels-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), copy_bandwidth=bw, gemv=g, attention=a), indent=1))


if __name__ == "__main__":
    main()

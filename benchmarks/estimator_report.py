#!/usr/bin/env python
"""Bias and spread of the shot-noise gradient estimators against the exact gradient.

A seeded small problem: a smooth 32×32 expected-count pattern λ at 10, 100 and 1000 counts/pixel,
the paper's TMV MTF (a, b, c, α, β) = (0.7, 0.2, 0.1, 10, 40) as a ``LearnableMTF``, and data that
is one noisy detector image of a different pattern (1.15 λ shifted by a pixel). For each estimator
in ``difftem.learn.estimators`` and 1, 4, 16 draws per call it repeats the call ``--replicas``
times and compares the gradients w.r.t. λ and w.r.t. the MTF parameters (a, b, c, raw_α, raw_β)
with the exact gradient of ``expected_mse`` (itself checked against central finite differences):

- ``bias``  = ||mean ĝ − g|| / ||g||, with the Monte-Carlo part removed
  (sqrt(max(0, ||mean ĝ − g||² − tr Σ / R))), printed where b/n or T²/k > 5; elsewhere the bias is not
  resolved and "<x" gives twice the noise floor sqrt(tr Σ / R) / ||g|| as a rough bound;
- ``b/n``   = ||mean ĝ − g||² / (tr Σ / R) for λ (1024 dims, more than the replicas), and
  ``T²/k`` = R (mean ĝ − g)ᵀ Σ⁻¹ (mean ĝ − g) / k (Hotelling, k = 5) for the MTF parameters, whose
  gradient variance lies almost all along one direction: ≈ 1 when unbiased, ≫ 1 when the bias is
  real;
- ``std``   = sqrt(tr Σ) / ||g||, the relative noise of one call (Σ the per-call covariance);
- ``ms``    = milliseconds per call (forward + backward, one thread).

Prints a table and writes JSON (default ``benchmarks/results/estimators.json``).

    python benchmarks/estimator_report.py [--replicas 1000] [--size 32] [--counts 10 100 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from difftem.forward.detector import MTFParams, apply_mtf
from difftem.forward.estimators import (
    LearnableMTF,
    expected_mse,
    reparameterised_loss,
    surrogate_loss,
    surrogate_loss_baseline,
)

ROOT = Path(__file__).resolve().parents[1]
TMV = MTFParams(0.7, 0.2, 0.1, 10.0, 40.0)
PARAMETER_NAMES = ("a", "b", "c", "raw_alpha", "raw_beta")
ESTIMATORS = {
    # name: (function, keyword arguments, smallest n_samples)
    "surrogate/pixel (paper)": (surrogate_loss, {"pairing": "pixel"}, 1),
    "surrogate/image": (surrogate_loss, {"pairing": "image"}, 1),
    "baseline/pixel": (surrogate_loss_baseline, {"pairing": "pixel"}, 2),
    "baseline/image": (surrogate_loss_baseline, {"pairing": "image"}, 2),
    "reparameterised": (reparameterised_loss, {}, 1),
}


def smooth_rate(size: int, mean_counts: float) -> torch.Tensor:
    """(size, size) float64 pattern with mean ``mean_counts`` and ±60 % smooth modulation."""
    coords = torch.arange(size, dtype=torch.float64)
    y, x = coords[:, None], coords[None, :]
    pattern = 1 + 0.6 * torch.sin(2 * torch.pi * x / size + 0.3) * torch.cos(4 * torch.pi * y / size - 0.2)
    return mean_counts * pattern


def exact_gradients(rate: torch.Tensor, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Exact gradients of expected_mse w.r.t. rate and the MTF parameters, and the loss."""
    leaf = rate.clone().requires_grad_()
    mtf = LearnableMTF.from_params(TMV)
    loss = expected_mse(leaf, data, mtf)
    loss.backward()
    return leaf.grad, torch.stack([p.grad for p in mtf.parameters()]), float(loss.detach())


def finite_difference_check(rate: torch.Tensor, data: torch.Tensor, rate_grad: torch.Tensor,
                            mtf_grad: torch.Tensor, generator: torch.Generator) -> dict:
    """Largest relative error of autograd vs central differences (16 random pixels, all MTF params)."""
    mtf = LearnableMTF.from_params(TMV)
    scale = rate_grad.abs().max()
    pixel_errors = []
    for index in torch.randperm(rate.numel(), generator=generator)[:16].tolist():
        step = 1e-3 * float(rate.flatten()[index])
        plus, minus = rate.clone().flatten(), rate.clone().flatten()
        plus[index] += step
        minus[index] -= step
        with torch.no_grad():
            difference = (expected_mse(plus.view_as(rate), data, mtf)
                          - expected_mse(minus.view_as(rate), data, mtf)) / (2 * step)
        pixel_errors.append(float((difference - rate_grad.flatten()[index]).abs() / scale))
    parameter_errors = []
    with torch.no_grad():
        for parameter, analytic in zip(mtf.parameters(), mtf_grad, strict=True):
            step = 1e-6
            parameter += step
            plus_loss = expected_mse(rate, data, mtf)
            parameter -= 2 * step
            minus_loss = expected_mse(rate, data, mtf)
            parameter += step
            parameter_errors.append(float(((plus_loss - minus_loss) / (2 * step) - analytic).abs() / analytic.abs()))
    return {"rate_max_error_rel_to_max_grad": max(pixel_errors), "mtf_max_rel_error": max(parameter_errors)}


def gradient_statistics(samples: torch.Tensor, exact: torch.Tensor) -> dict:
    """Relative bias (Monte-Carlo part removed), its significance, and the per-call relative spread."""
    replicas = samples.shape[0]
    flat = samples.reshape(replicas, -1)
    difference = flat.mean(0) - exact.flatten()
    error_sq = float((difference**2).sum())
    total_variance = float(flat.var(0).sum())
    norm = float(exact.norm())
    noise_of_mean = total_variance / replicas
    hotelling = None
    if replicas > 10 * flat.shape[1]:
        # Whitened (Hotelling T²/dof, ≈ 1 when unbiased): the trace ratio alone is χ²₁-like when one
        # direction holds the variance, as for the MTF parameters, and overstates flukes.
        covariance = torch.cov(flat.T)
        hotelling = float(replicas * difference @ torch.linalg.lstsq(covariance, difference).solution / flat.shape[1])
    return {
        "rel_bias": max(0.0, error_sq - noise_of_mean) ** 0.5 / norm,
        "rel_noise_floor": noise_of_mean**0.5 / norm,
        "rel_bias_raw": error_sq**0.5 / norm,
        "bias_to_noise": error_sq / noise_of_mean if noise_of_mean > 0 else float("inf"),
        "hotelling_per_dof": hotelling,
        "rel_std": total_variance**0.5 / norm,
    }


def bias_significance(stats: dict) -> float:
    """Hotelling T²/dof where the replicas allow it, else the trace ratio b/n; ≈ 1 when unbiased."""
    return stats["hotelling_per_dof"] if stats["hotelling_per_dof"] is not None else stats["bias_to_noise"]


def format_bias(stats: dict) -> str:
    """The bias where it stands out of the Monte-Carlo noise (significance > 5), else '<' twice the noise floor."""
    if bias_significance(stats) > 5:
        return f"{stats['rel_bias']:.3f}"
    return f"<{2 * stats['rel_noise_floor']:.2g}"


def run_estimator(function, kwargs: dict, rate: torch.Tensor, data: torch.Tensor, n_samples: int,
                  replicas: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(replicas, H, W) rate gradients, (replicas, 5) MTF gradients, seconds per call."""
    generator = torch.Generator().manual_seed(seed)
    mtf = LearnableMTF.from_params(TMV)
    rate_grads, mtf_grads = [], []
    function(rate.clone().requires_grad_(), data, mtf, torch.Generator().manual_seed(seed - 1), n_samples=n_samples,
             **kwargs).surrogate.backward()  # warm-up, not timed
    start = time.perf_counter()
    for _ in range(replicas):
        leaf = rate.clone().requires_grad_()
        mtf.zero_grad()
        function(leaf, data, mtf, generator, n_samples=n_samples, **kwargs).surrogate.backward()
        rate_grads.append(leaf.grad)
        mtf_grads.append(torch.stack([p.grad.clone() for p in mtf.parameters()]))
    seconds_per_call = (time.perf_counter() - start) / replicas
    return torch.stack(rate_grads), torch.stack(mtf_grads), seconds_per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=32, help="image side, pixels")
    parser.add_argument("--counts", type=float, nargs="+", default=[10.0, 100.0, 1000.0],
                        help="mean expected counts per pixel")
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 4, 16], help="draws per estimator call")
    parser.add_argument("--replicas", type=int, default=1000, help="calls per estimator and setting")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "estimators.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows, checks = [], []
    header = (f"{'estimator':<24} {'counts':>6} {'n':>3} | {'rate bias':>9} {'b/n':>7} {'rate std':>9} | "
              f"{'mtf bias':>9} {'T²/k':>7} {'mtf std':>9} | {'ms':>6}")
    print(f"{args.size}×{args.size} px, TMV MTF {tuple(TMV.__dict__.values())}, {args.replicas} calls per row; "
          "bias and std relative to ||exact gradient||")
    print(header)
    print("-" * len(header))
    for counts_index, counts in enumerate(args.counts):
        generator = torch.Generator().manual_seed(args.seed + counts_index)
        rate = smooth_rate(args.size, counts)
        truth = 1.15 * rate.roll(1, -1)
        data = apply_mtf(torch.poisson(truth, generator=generator), TMV, normalize_dc=False)
        exact_rate, exact_mtf, exact_loss = exact_gradients(rate, data)
        check = {"counts": counts, "expected_mse": exact_loss, **finite_difference_check(rate, data, exact_rate,
                                                                                       exact_mtf, generator)}
        checks.append(check)
        start = time.perf_counter()
        for _ in range(20):
            leaf = rate.clone().requires_grad_()
            mtf = LearnableMTF.from_params(TMV)
            expected_mse(leaf, data, mtf).backward()
        exact_ms = (time.perf_counter() - start) / 20 * 1e3
        print(f"{'expected_mse (exact)':<24} {counts:>6.0f} {'-':>3} | {0:>9.3f} {'-':>7} {0:>9.3f} | "
              f"{0:>9.3f} {'-':>7} {0:>9.3f} | {exact_ms:>6.2f}")
        rows.append({"estimator": "expected_mse", "counts": counts, "n_samples": None, "ms_per_call": exact_ms})
        for estimator_index, (name, (function, kwargs, min_samples)) in enumerate(ESTIMATORS.items()):
            for n_samples in args.samples:
                if n_samples < min_samples:
                    continue
                rate_grads, mtf_grads, seconds = run_estimator(function, kwargs, rate, data, n_samples,
                                                               args.replicas,
                                                               args.seed + 100_000 * counts_index
                                                               + 1000 * (estimator_index + 1) + n_samples)
                rate_stats = gradient_statistics(rate_grads, exact_rate)
                mtf_stats = gradient_statistics(mtf_grads, exact_mtf)
                per_parameter = {
                    p: {"exact": float(exact_mtf[i]), "mean": float(mtf_grads[:, i].mean()),
                        "std": float(mtf_grads[:, i].std())}
                    for i, p in enumerate(PARAMETER_NAMES)
                }
                rows.append({"estimator": name, "counts": counts, "n_samples": n_samples,
                             "ms_per_call": seconds * 1e3, "rate": rate_stats, "mtf": mtf_stats,
                             "mtf_per_parameter": per_parameter})
                print(f"{name:<24} {counts:>6.0f} {n_samples:>3} | {format_bias(rate_stats):>9} "
                      f"{bias_significance(rate_stats):>7.2f} {rate_stats['rel_std']:>9.3g} | "
                      f"{format_bias(mtf_stats):>9} {bias_significance(mtf_stats):>7.2f} "
                      f"{mtf_stats['rel_std']:>9.3g} | {seconds * 1e3:>6.2f}")
        print("-" * len(header))
    for check in checks:
        print(f"finite-difference check of expected_mse at {check['counts']:.0f} counts: rate max err "
              f"{check['rate_max_error_rel_to_max_grad']:.1e} (rel. to max |grad|), MTF params max rel err "
              f"{check['mtf_max_rel_error']:.1e}")

    meta = {"size_px": args.size, "counts": args.counts, "samples": args.samples, "replicas": args.replicas,
            "seed": args.seed, "threads": args.threads, "mtf": TMV.__dict__, "mtf_parameters": PARAMETER_NAMES,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.processor()
            or platform.machine(), "definitions": {
                "rel_bias": "sqrt(max(0, ||mean g - g*||^2 - tr(Cov)/R)) / ||g*||",
                "bias_to_noise": "||mean g - g*||^2 / (tr(Cov)/R); ~1 if unbiased",
                "hotelling_per_dof": ("R (mean g - g*)^T Cov^-1 (mean g - g*) / dim; ~1 if unbiased "
                                      "(only if R > 10 dim)"),
                "rel_std": "sqrt(tr(Cov)) / ||g*|| for one call"}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "finite_difference": checks, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The seed paper's denoising study (section 8, Figs. 8–9) with difftem, plus the real-micrograph run.

Synthetic scenes are simulated once with ``difftem.simulate`` (multislice, CTF, no detector) and the
ground truth is the noise-free expected counts Ĩ = dose × pixel area × intensity before the MTF;
the observations are independent Poisson draws of Ĩ through the paper's TMV detector MTF
(a, b, c, α, β = 0.7, 0.2, 0.1, 10, 40). As in the paper's released evaluation, every method is
scored against the noise-free *detected* image MTF(Ĩ) (our methods output I_d = MTF(Ĩ)); the JSON also
holds our rates Ĩ scored against the true Ĩ. Metrics: SSIM, PSNR, MSE, FFL after mapping the
reference's [min, max] to [0, 1] (difftem.denoise.metrics).

Doses are per projection in e/nm² (100 e/nm² = 1 e/Å²); the default run is a modest subset at 256²:

    python benchmarks/denoise_study.py                         # TMV, doses 100/700/2000 × n 2/10/50
    python benchmarks/denoise_study.py --full --scenes tmv,apoferritin   # 8 doses × 5 n per scene
    python benchmarks/denoise_study.py --timing                # 1024², 10 observations, 2 threads
    python benchmarks/denoise_study.py --real                  # one real micrograph, Topaz augmentation

Each run prints tables and writes JSON (and PNG figures) to benchmarks/results/. Timings on a shared
CPU are noisy: compare methods within one run, re-measure on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))

import difftem  # noqa: E402
from difftem.denoise import baselines as B  # noqa: E402
from difftem.denoise import metrics as M  # noqa: E402
from difftem.denoise.algorithm import denoise  # noqa: E402
from difftem.denoise.metrics import format_table  # noqa: E402
from difftem.denoise.topaz_model import topaz_available, topaz_denoise  # noqa: E402
from difftem.forward.detector import MTFParams, apply_mtf, expected_counts  # noqa: E402
from difftem.io.files import atomic_path, write_json  # noqa: E402

TMV_MTF = MTFParams(0.7, 0.2, 0.1, 10.0, 40.0)
DOSES_FULL = (100, 200, 300, 500, 700, 1000, 1500, 2000)
N_FULL = (2, 5, 10, 25, 50)
PIXEL_A = 2.0
OURS = {  # label → denoise() keyword arguments
    "ours_tv": {"method": "poisson", "prior": "tv"},
    "ours_spectral": {"method": "poisson", "prior": "spectral"},
    "expected_tv": {"method": "expected", "prior": "tv"},
}
EXPENSIVE = {  # sampling methods: run on a subset of settings (--all-methods for every setting)
    "paper": {"method": "paper", "n_samples": 8},  # 300 Adam steps, 8 Poisson draws each
    "surrogate_tv": {"method": "surrogate", "prior": "tv", "n_samples": 4},
}


# --- scenes ----------------------------------------------------------------------------------------------

def scene_config(name: str, size: int) -> dict:
    """A difftem config (detector noise and MTF off: the study adds them) for a named scene."""
    base = {"seed": 0, "beam": {"voltage_kv": 300, "dose_e_per_a2": 1.0}, "optics": {"defocus_um": 2.0},
            "detector": {"shape_px": [size, size], "pixel_size_a": PIXEL_A, "noise": "none", "mtf": None},
            "simulation": {"slice_thickness_a": 4.0}}
    field_a = size * PIXEL_A
    if name == "tmv":
        # a TMV rod segment: 2OM3's coat-protein subunit repeated with the virus's helix (rise 1.408 Å,
        # 16.33 subunits per turn); the file's frame has the helix axis along z, turned onto x here
        rise, twist = 1.408, 360.0 / 16.333
        n = int(0.7 * field_a / rise)
        x0 = -n * rise / 2 - 29.0  # the subunit's own z offset in the file
        base["sample"] = {"ice_thickness_nm": 20, "particles": [{
            "structure": str(SHARED / "structures" / "2om3_tmv_cssmol.pdb.gz"), "models": "first", "centre": "none",
            "representation": "atoms",  # every copy has its own rotation: the exact per-slice builder
            "positions_a": [[x0 + k * rise, 0.0, 0.0] for k in range(n)],
            "euler_zyz_deg": [[0.0, 90.0, k * twist] for k in range(n)]}]}
    elif name == "apoferritin":
        # human apoferritin 24-mers (6Z6U, 12 nm) in random orientations, spread over the field
        rng = np.random.default_rng(0)
        spacing = 140.0
        k = max(1, int(field_a * 0.8 // spacing))
        centres = [[(i - (k - 1) / 2) * spacing, (j - (k - 1) / 2) * spacing, 0.0] for i in range(k) for j in range(k)]
        eulers = rng.uniform([0, 0, 0], [360, 180, 360], size=(len(centres), 3)).tolist()
        base["sample"] = {"ice_thickness_nm": 20, "particles": [{
            "structure": str(SHARED / "structures" / "6z6u_apoferritin.pdb.gz"), "positions_a": centres,
            "representation": "atoms",
            "euler_zyz_deg": eulers}]}
    else:
        raise SystemExit(f"unknown scene {name!r}: tmv or apoferritin")
    return base


def simulate_intensity(name: str, size: int) -> torch.Tensor:
    t = time.perf_counter()
    result = difftem.simulate(scene_config(name, size))
    print(f"simulated {name} {size}² in {time.perf_counter() - t:.1f} s ({result.metadata['n_atoms']} atoms)",
          flush=True)
    return result.intensity.to(torch.float64)


def observations(rate: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n detector images (float32, as a detector file would hold them)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.poisson(rate.expand(n, *rate.shape).contiguous(), generator=g)
    return apply_mtf(counts, TMV_MTF, True).to(torch.float32)


# --- one setting -----------------------------------------------------------------------------------------

def run_setting(intensity, dose_e_per_nm2: int, n: int, seed: int, *, expensive: bool, n2n: bool, topaz: bool):
    rate = expected_counts(intensity, dose_e_per_nm2 / 100.0, PIXEL_A)  # e/nm² → e/Å²
    truth = apply_mtf(rate, TMV_MTF, True)
    obs = observations(rate, n, seed)
    rate, truth = rate.to(torch.float32), truth.to(torch.float32)
    images, seconds, extra = {}, {}, {}

    def timed(label, fn):
        t = time.perf_counter()
        images[label] = fn()
        seconds[label] = time.perf_counter() - t

    timed("average", lambda: B.average(obs))
    timed("lowpass", lambda: B.gaussian_lowpass(obs))
    if topaz:
        timed("topaz_p", lambda: topaz_denoise(obs.mean(0)).to(obs.dtype))  # Topaz P on the mean of the n images
    if n2n:
        def train():
            est, record = B.noise2noise(obs, seed=seed)
            extra["n2n"] = {"final_loss": record["loss_history"][-1], "steps": record["steps"]}
            return est
        timed("n2n", train)
    rates = {}
    for label, kw in {**OURS, **(EXPENSIVE if expensive else {})}.items():
        t = time.perf_counter()
        res = denoise(obs, TMV_MTF, seed=seed, check_alignment=False, **kw)
        seconds[label] = time.perf_counter() - t
        images[label], rates[label] = res.denoised, res.rate
        extra[label] = {"prior_weight": res.settings["prior_weight"], "lr": res.settings["lr"],
                        "steps": res.settings["steps"], "final_loss": res.settings["final_loss"],
                        "rate_mean_bias": float(res.rate.mean() - rate.mean())}
    metrics = {k: M.compare(v, truth) for k, v in images.items()}
    rate_metrics = {k: M.compare(v, rate) for k, v in rates.items()}
    return {"dose_e_per_nm2": dose_e_per_nm2, "n_observations": n, "mean_counts_per_px": float(rate.mean()),
            "metrics": metrics, "rate_metrics": rate_metrics, "seconds": seconds, "details": extra}, \
        {"noisy": obs[0], "truth": truth, **images}


def checks(setting: dict, ours: str = "ours_tv") -> dict:
    m = setting["metrics"]
    out = {"psnr_beats_average": m[ours]["psnr"] > m["average"]["psnr"],
           "ssim_beats_average": m[ours]["ssim"] > m["average"]["ssim"],
           "ffl_ratio_average_over_ours": m["average"]["ffl"] / max(m[ours]["ffl"], 1e-30)}
    if "topaz_p" in m:
        out["beats_topaz_psnr_ssim_ffl"] = (m[ours]["psnr"] > m["topaz_p"]["psnr"],
                                            m[ours]["ssim"] > m["topaz_p"]["ssim"],
                                            m[ours]["ffl"] < m["topaz_p"]["ffl"])
    return out


def winners(setting: dict) -> dict:
    m = setting["metrics"]
    return {"psnr": max(m, key=lambda k: m[k]["psnr"]), "ssim": max(m, key=lambda k: m[k]["ssim"]),
            "ffl": min(m, key=lambda k: m[k]["ffl"])}


# --- output ------------------------------------------------------------------------------------------------

def figure(path: Path, rows: list[tuple[str, dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["noisy", "truth", "ours_tv", "ours_spectral", "average", "lowpass", "topaz_p", "n2n", "paper"]
    cols = [c for c in order if any(c in imgs for _, imgs in rows)]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.3 * len(cols), 2.4 * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        lo, hi = np.percentile(imgs["truth"].numpy(), [0.5, 99.5])
        for c, name in enumerate(cols):
            ax = axes[r][c]
            ax.axis("off")
            if r == 0:
                ax.set_title(name, fontsize=9)
            if name not in imgs:
                continue
            a = imgs[name].numpy()
            if name == "noisy":  # one raw observation: its own range, or it is all black/white
                lo_n, hi_n = np.percentile(a, [0.5, 99.5])
                ax.imshow(a, cmap="gray", vmin=lo_n, vmax=hi_n)
            else:
                ax.imshow(a, cmap="gray", vmin=lo, vmax=hi)
        axes[r][0].text(-0.08, 0.5, label, transform=axes[r][0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def method_names(settings: list[dict]) -> list[str]:
    """Every method that ran in any setting, in first-seen order (some run only in corner settings)."""
    names: list[str] = []
    for s in settings:
        names += [k for k in s["metrics"] if k not in names]
    return names


def summarise(settings: list[dict]) -> dict:
    names = method_names(settings)
    summary = {
        "psnr_and_ssim_beat_average_everywhere": all(s["checks"]["psnr_beats_average"]
                                                     and s["checks"]["ssim_beats_average"] for s in settings),
        "min_ffl_ratio_at_dose_ge_700": min((s["checks"]["ffl_ratio_average_over_ours"] for s in settings
                                             if s["dose_e_per_nm2"] >= 700), default=None),
        "settings": len(settings),
    }
    for metric in ("psnr", "ssim", "ffl"):
        summary[f"wins_{metric}"] = {k: sum(s["winners"][metric] == k for s in settings) for k in names}
    at = [s for s in settings if s["dose_e_per_nm2"] == 100 and s["n_observations"] == 50]
    if at and "topaz_p" in at[0]["metrics"]:
        summary["vs_topaz_at_100_50"] = at[0]["checks"]["beats_topaz_psnr_ssim_ffl"]
    return summary


def print_tables(scene: str, settings: list[dict]) -> None:
    methods = method_names(settings)
    for metric in ("psnr", "ssim", "ffl"):
        rows = []
        for s in settings:
            row = {"dose": s["dose_e_per_nm2"], "n": s["n_observations"]}
            row.update({k: s["metrics"][k][metric] for k in s["metrics"]})
            rows.append(row)
        cols = ["dose", "n"] + [m for m in methods if any(m in r for r in rows)]
        print(f"\n{scene}: {metric.upper()} against MTF(Ĩ) "
              f"(higher is better{', lower for FFL' if metric == 'ffl' else ''})")
        print(format_table(rows, cols, "{:.4g}"))


def study(args) -> None:
    topaz = topaz_available() and not args.no_topaz
    if not topaz:
        print("Topaz-Denoise not installed or disabled: Topaz P column skipped", flush=True)
    doses = DOSES_FULL if args.full else tuple(int(d) for d in args.doses.split(","))
    ns = N_FULL if args.full else tuple(int(n) for n in args.n_obs.split(","))
    report = {"size_px": args.size, "pixel_size_a": PIXEL_A, "mtf": [0.7, 0.2, 0.1, 10, 40], "doses_e_per_nm2": doses,
              "n_observations": ns, "seed": args.seed, "threads": torch.get_num_threads(), "scenes": {},
              "optics": {"voltage_kv": 300, "defocus_um": 2.0}, "reference": "MTF(Ĩ), reference range → [0, 1]"}
    for scene in args.scenes.split(","):
        intensity = simulate_intensity(scene, args.size)
        settings, fig_rows = [], []
        expensive_set = {(min(doses), min(ns)), (min(doses), max(ns)), (max(doses), max(ns))}
        for dose in doses:
            for n in ns:
                t = time.perf_counter()
                expensive = args.all_methods or (dose, n) in expensive_set
                s, imgs = run_setting(intensity, dose, n, args.seed, expensive=expensive and not args.no_expensive,
                                      n2n=args.n2n and n >= 5 and (args.all_methods or (dose, n) in expensive_set),
                                      topaz=topaz)
                s["checks"], s["winners"] = checks(s), winners(s)
                settings.append(s)
                m = s["metrics"]
                print(f"{scene} dose {dose:5d} n {n:3d}: PSNR avg {m['average']['psnr']:6.2f}"
                      f" ours {m['ours_tv']['psnr']:6.2f}"
                      f" | SSIM avg {m['average']['ssim']:.3f} ours {m['ours_tv']['ssim']:.3f} | FFL avg/ours "
                      f"{s['checks']['ffl_ratio_average_over_ours']:.1f}x | best PSNR {s['winners']['psnr']}"
                      f" ({time.perf_counter() - t:.1f} s)", flush=True)
                if (dose, n) in expensive_set:
                    fig_rows.append((f"({dose}, {n})", imgs))
        print_tables(scene, settings)
        summary = summarise(settings)
        print(f"\n{scene} summary: {json.dumps(summary)}")
        report["scenes"][scene] = {"settings": settings, "summary": summary}
        fig_path = RESULTS / f"denoise_study_{scene}.png"
        figure(fig_path, fig_rows)
        print(f"figure: {fig_path}")
    out = RESULTS / (args.name + ".json")
    write_json(out, report)
    print(f"wrote {out}")


def reprint(path: str) -> None:
    """Tables and summaries of a JSON written by an earlier run."""
    report = json.loads(Path(path).read_text())
    for scene, data in report["scenes"].items():
        print_tables(scene, data["settings"])
        print(f"\n{scene} summary: {json.dumps(summarise(data['settings']))}")


def timing(args) -> None:
    """Seconds per denoise of 1024² with 10 observations (the issue's target: < 60 s on 2 cores)."""
    torch.set_num_threads(args.threads)
    intensity = simulate_intensity("tmv", 256)
    big = intensity.repeat(4, 4)  # a periodic 1024² field: the cost does not depend on the content
    rate = expected_counts(big, 7.0, PIXEL_A)
    obs = observations(rate, 10, args.seed).to(torch.float32)
    rows = []
    for label, kw in {**OURS, "paper (300 steps)": {"method": "paper"}}.items():
        if label.startswith("paper") and args.no_expensive:
            continue
        t = time.perf_counter()
        res = denoise(obs, TMV_MTF, seed=args.seed, **kw)
        rows.append({"method": label, "seconds": time.perf_counter() - t, "steps": res.settings["steps"],
                     "prior_weight": res.settings["prior_weight"]})
        print(rows[-1], flush=True)
    t = time.perf_counter()
    B.average(obs)
    rows.append({"method": "average", "seconds": time.perf_counter() - t})
    if topaz_available():
        t = time.perf_counter()
        topaz_denoise(obs.mean(0))
        rows.append({"method": "topaz_p (one 1024² image)", "seconds": time.perf_counter() - t})
    print(format_table(rows, ["method", "seconds", "steps", "prior_weight"], "{:.3g}"))
    write_json(RESULTS / f"denoise_timing_1024_{args.threads}threads.json", {"shape": [10, 1024, 1024],
                                                                           "threads": args.threads, "rows": rows,
                                                      "note": "shared CPU: re-measure on an idle machine"})


def real(args) -> None:
    """One real micrograph (single exposure): Topaz P, Ours, Ours(T); pairwise table (the paper's Table 4)."""
    import tempfile

    from difftem.denoise.detector_params import estimate_gain_per_dqe, settings_from_mtf_fit
    from difftem.denoise.run import load_images, write_before_after
    from difftem.learn.mtf_run import run_fit_mtf

    path = Path(args.real_path)
    images, pixel_a = load_images([path])
    full = torch.from_numpy(images[0]).to(torch.float64)
    c = args.real_crop
    y0, x0 = (full.shape[0] - c) // 2, (full.shape[1] - c) // 2
    mic = full[y0:y0 + c, x0:x0 + c]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the detector MTF from the micrograph's own background (NPS)
        run_fit_mtf([path], Path(tmp), method="nps")
        detector = settings_from_mtf_fit(Path(tmp) / "mtf_fit.json")
    gain = estimate_gain_per_dqe(mic[None], detector.mtf)
    print(f"MTF from fit-mtf (NPS): {detector.mtf}; gain/DQE from the shot noise: {gain:.3g} units/e "
          f"({float(mic.mean()) / gain:.1f} e/px) [{time.perf_counter() - t:.1f} s]", flush=True)
    topaz_img = topaz_denoise(mic).to(mic.dtype)
    results, images_out = {}, {"noisy": mic, "topaz": topaz_img}
    for label, kw in {"ours": {}, "ours_T": {"extra_observations": topaz_img[None]},
                      "paper_T": {"method": "paper", "n_samples": 4, "extra_observations": topaz_img[None]}}.items():
        if label == "paper_T" and args.no_expensive:
            continue
        t = time.perf_counter()
        res = denoise(mic[None], detector.mtf, gain=gain, seed=args.seed, **kw)
        images_out[label] = res.denoised
        results[label] = {"seconds": time.perf_counter() - t, **{k: res.settings[k] for k in
                                                                   ("method", "prior", "prior_weight", "steps", "lr")}}
        print(label, results[label], flush=True)
    table = M.pairwise_table(images_out, normalise="minmax")
    for metric in ("ssim", "psnr", "ffl"):
        print(f"\n{metric.upper()} (row vs column, min-max normalised)")
        rows = [{"": a, **{b: table[metric][i][j] for j, b in enumerate(table["names"])}}
                for i, a in enumerate(table["names"])]
        print(format_table(rows, [""] + table["names"], "{:.4f}"))
    write_before_after(RESULTS / "denoise_real.png", {k: v for k, v in images_out.items()}, None, pixel_a)
    zoom = slice(c // 2 - 128, c // 2 + 128)
    write_before_after(RESULTS / "denoise_real_zoom.png", {k: v[zoom, zoom] for k, v in images_out.items()}, None,
                       pixel_a)
    write_json(RESULTS / "denoise_real.json", {
        "micrograph": str(path), "crop_px": c, "pixel_size_a": pixel_a, "mtf": str(detector.mtf),
        "gain_per_dqe": gain, "methods": results,
        "pairwise": {k: ([[None if (isinstance(x, float) and not math.isfinite(x)) else x for x in r] for r in v]
                         if k in M.METRICS else v) for k, v in table.items()}})
    print(f"wrote {RESULTS / 'denoise_real.json'}, denoise_real.png, denoise_real_zoom.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="field size (px, 2 Å pixels)")
    p.add_argument("--scenes", default="tmv", help="comma-separated: tmv, apoferritin")
    p.add_argument("--doses", default="100,700,2000", help="e/nm² per projection")
    p.add_argument("--n-obs", default="2,10,50", help="observations per scene")
    p.add_argument("--full", action="store_true", help="the paper's full grid: 8 doses × 5 observation counts")
    p.add_argument("--all-methods", action="store_true", help="run the sampling methods (paper, surrogate) and "
                   "Noise2Noise in every setting (default: three corner settings)")
    p.add_argument("--no-expensive", action="store_true", help="skip the sampling methods")
    p.add_argument("--n2n", action="store_true", help="train the Noise2Noise U-Net (n ≥ 5, corner settings)")
    p.add_argument("--no-topaz", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="denoise_study", help="JSON name in benchmarks/results/")
    p.add_argument("--timing", action="store_true", help="time 1024² × 10 observations")
    p.add_argument("--from-json", default=None, help="print the tables of an earlier run's JSON and exit")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 by default: on a shared 2-core "
                   "machine two threads wait on each other, measured 460 ms per step instead of 2 ms at 256²)")
    p.add_argument("--real", dest="real_path", nargs="?", const=str(SHARED / "micrographs" /
                   "real_micrograph_falcon_epu_crop2048.mrc.gz"), default=None, help="real micrograph run")
    p.add_argument("--real-crop", type=int, default=1024, help="central crop of the real micrograph (px)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_json:
        reprint(args.from_json)
    elif args.timing:
        timing(args)
    elif args.real_path:
        real(args)
    else:
        study(args)


if __name__ == "__main__":
    main()

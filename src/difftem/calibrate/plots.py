"""Figures of the calibration: Thon rings (1-D equiphase average and the 2-D spectrum, data | model), defocus per
tilt, and the real-vs-simulated report panels. matplotlib's Figure without pyplot (no GUI backend, no globals)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io.files import atomic_path
from ..learn.ctf_fit import CTFFit, model_spectrum


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _half_and_half(fit: CTFFit) -> np.ndarray:
    """Centred spectrum, data on the left half, model on the right: (data − B)/E (lightly smoothed) against
    CTF², so the rings read alike; outside the fitted band grey."""
    background, envelope, ctf2 = model_spectrum(fit)
    data = (fit.extras["mean_spectrum"] - background) / envelope.abs().clamp_min(1e-30)
    n = data.shape[0]
    k = np.hypot(np.fft.fftfreq(n)[:, None], np.arange(n // 2 + 1)[None, :] / n) / fit.pixel_size_a
    band = (k >= 1 / fit.fit_band_a[0]) & (k <= 1 / fit.fit_band_a[1])

    def full(half: np.ndarray) -> np.ndarray:
        right = np.fft.fftshift(np.where(band, half, 0.5), axes=0)         # kx ≥ 0, ky centred
        left = np.roll(np.flip(right, (0, 1)), 1, axis=0)[:, :n // 2]      # kx < 0: P(−k) = P(k)
        return np.concatenate([left, right[:, :n // 2]], axis=1)

    d = torch.nn.functional.avg_pool2d(data[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    d = d.numpy()  # 3×3 mean: the rings are wider than that, the noise is not
    out = full(np.clip(d, -0.5, 1.5))
    out[:, n // 2:] = full(ctf2.numpy())[:, n // 2:]
    return out


def thon_figure(fit: CTFFit, path: str | Path, title: str = "") -> Path:
    """Two panels: the equiphase average (data − background, model, local correlation, fit resolution), and the
    2-D spectrum half data / half model."""
    from matplotlib.figure import Figure

    e = fit.extras
    k = e["profile_k_per_a"]
    fig = Figure(dpi=100, figsize=(12, 4.4))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    ax1.plot(k, e["profile_data"], lw=0.8, color="0.2", label="data − background")
    ax1.plot(k, e["profile_model"], lw=1.0, color="tab:red", label="fit: envelope × CTF²")
    top = float(np.nanmax(np.abs(e["profile_data"]))) or 1.0
    ax1.plot(k, np.asarray(e["profile_correlation"]) * top, lw=0.7, color="tab:green", label="local correlation")
    ax1.axvline(1 / fit.fit_resolution_a, color="tab:green", ls=":", lw=0.8)
    ax1.set_xlabel("spatial frequency (1/Å)")
    ax1.set_ylabel("power (data units²)")
    ax1.legend(fontsize=8, loc="upper right")
    ax1.set_title(f"U {fit.defocus_u_a:.0f} Å, V {fit.defocus_v_a:.0f} Å, angle {fit.defocus_angle_deg:.1f}°, "
                  f"fit to {fit.fit_resolution_a:.1f} Å", fontsize=10)
    ax2.imshow(_half_and_half(fit), cmap="gray", interpolation="nearest")
    n = fit.extras["tile_px"]
    r = min(n / 2, 1.08 * n * fit.pixel_size_a / fit.fit_band_a[1])  # zoom to the fitted band
    ax2.set_xlim(n / 2 - r, n / 2 + r)
    ax2.set_ylim(n / 2 + r, n / 2 - r)
    ax2.set_title("spectrum: data | model", fontsize=10)
    ax2.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def tilt_defocus_figure(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Fitted mean defocus per tilt (with its bootstrap error) and, when known, the reference values."""
    from matplotlib.figure import Figure

    tilt = np.array([r["tilt_deg"] if r.get("tilt_deg") is not None else i for i, r in enumerate(rows)], float)
    fit = np.array([r["defocus_mean_a"] for r in rows]) / 1e4
    sd = np.array([r.get("defocus_sd_a", np.nan) for r in rows]) / 1e4
    fig = Figure(dpi=100, figsize=(7, 4))
    ax = fig.subplots()
    ax.errorbar(tilt, fit, yerr=np.nan_to_num(sd), fmt="o", ms=3, label="fitted")
    ref = [r.get("reference_defocus_mean_a") for r in rows]
    if any(v is not None for v in ref):
        ax.plot(tilt, np.array([np.nan if v is None else v for v in ref]) / 1e4, "x", color="tab:red",
                label="reference (input metadata)")
    has_angles = any(r.get("tilt_deg") is not None for r in rows)
    ax.set_xlabel("tilt (°)" if has_angles else "image")
    ax.set_ylabel("mean defocus (µm)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, Path(path))


def report_figure(record: dict, plot: dict, path: str | Path) -> Path:
    """Real vs calibrated simulation: power spectra per band and their ratio, Thon rings, intensity histograms,
    and a background crop of each."""
    from matplotlib.figure import Figure

    bands = record["likeness"]["bands"]
    fig = Figure(dpi=90, figsize=(15, 8.6))
    axs = fig.subplots(2, 3)
    c = np.asarray(bands["band_centres_per_px"])
    ax = axs[0, 0]
    ax.semilogy(c, bands["real_power"], "o-", ms=3, label="real")
    ax.semilogy(c, bands["simulated_power"], "s-", ms=3, label="simulated (calibrated)")
    ax.set_xlabel("frequency (cycles/px)")
    ax.set_ylabel("power of background crops (units²/px)")
    ax.set_title("power spectra (noise + specimen)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axs[0, 1]
    ax.axhspan(0.9, 1.1, color="tab:green", alpha=0.15, label="±10 %")
    ax.plot(c, bands["ratio"], "o-", ms=3)
    ax.axhline(1, color="0.4", lw=0.7)
    ax.set_xlabel("frequency (cycles/px)")
    ax.set_ylabel("simulated / real")
    ax.set_title(f"per band: worst {bands['worst_ratio']:.3f} at {bands['worst_band_per_px']:.3f} /px; classifier "
                 f"accuracy {record['likeness']['classifier']['accuracy']:.2f}", fontsize=10)
    ax.legend(fontsize=8)
    ax = axs[0, 2]
    for fit, label in ((plot["fit"], "real"), (plot.get("sim_fit"), "simulated")):
        if fit is None:
            continue
        d = np.asarray(fit.extras["profile_data"])
        ax.plot(fit.extras["profile_k_per_a"], d / (np.abs(d).max() or 1), lw=0.8,
                label=f"{label}: U {fit.defocus_u_a:.0f} V {fit.defocus_v_a:.0f} Å")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("data − background (normalised)")
    ax.set_title("Thon rings (equiphase average)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axs[1, 0]
    real, sim = plot["real_crops"].numpy().ravel(), plot["sim_crops"].numpy().ravel()
    lo, hi = np.percentile(np.concatenate([real, sim]), [0.1, 99.9])
    ax.hist(real, bins=120, range=(lo, hi), histtype="step", density=True, label="real")
    ax.hist(sim, bins=120, range=(lo, hi), histtype="step", density=True, label="simulated")
    ax.set_xlabel("pixel value (data units)")
    ax.set_title("intensity histograms (background crops)", fontsize=10)
    ax.legend(fontsize=8)
    for ax, crops, label in ((axs[1, 1], plot["real_crops"], "real crop"),
                             (axs[1, 2], plot["sim_crops"], "simulated crop")):
        ax.imshow(crops[0].numpy(), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"{record['name']}: calibrated simulation vs data ({record['pixel_size_a']:.3f} Å/px)", fontsize=11)
    return _save(fig, Path(path))

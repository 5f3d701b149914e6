"""Micrographs of known CTF made with the project's own lens (forward/optics.py): an amorphous weak-phase film
(a Gaussian random phase, ~carbon) imaged through transfer_function, then Poisson counts. Tilted films are made
strip by strip parallel to the tilt axis, each strip at its own defocus."""

import math

import torch

from difftem.core.fft import irfft2, rfft2
from difftem.core.grid import Grid
from difftem.forward.beam import wavelength_a
from difftem.forward.optics import Optics, image_intensity, transfer_function


def film_wave(n, pixel_size_a, seed, phase_rms=0.3, amplitude_contrast=0.07):
    g = torch.Generator().manual_seed(seed)
    grid = Grid((n, n), pixel_size_a)
    white = torch.randn(n, n, generator=g, dtype=torch.float64)
    phase = irfft2(rfft2(white) * torch.exp(-4.0 * grid.k2(dtype=torch.float64, half=True)), (n, n))
    phase = phase / phase.std() * phase_rms
    absorb = amplitude_contrast / math.sqrt(1 - amplitude_contrast**2)  # amplitude contrast as absorption ∝ phase
    return torch.exp((1j * phase - absorb * phase).to(torch.complex128)), grid, g


def ctf_micrograph(n=1024, pixel_size_a=1.0, defocus_u_a=15000.0, defocus_v_a=15000.0, angle_deg=0.0,
                   dose_e_per_a2=20.0, seed=0, voltage_kv=300.0, cs_mm=2.7, tilt_deg=0.0, tilt_axis_deg=0.0,
                   strip_px=32):
    """(counts image, the defocus change per Å of signed distance d from the axis) — the defocus at distance d
    is the given one + d·tan(tilt), d along (cos α, sin α) (the axis along (−sin α, cos α))."""
    psi, grid, g = film_wave(n, pixel_size_a, seed)
    mean, astig = 0.5 * (defocus_u_a + defocus_v_a), defocus_u_a - defocus_v_a

    def image(defocus_a):
        o = Optics(defocus_a=defocus_a, astigmatism_a=astig, astigmatism_angle_deg=angle_deg, cs_mm=cs_mm,
                   energy_spread_ev=0.8, illumination_semiangle_mrad=0.02)
        return image_intensity(psi, transfer_function(grid, wavelength_a(voltage_kv), voltage_kv, o,
                                                      dtype=torch.complex128))

    if tilt_deg == 0:
        inten = image(mean)
    else:
        yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64),
                                indexing="ij")
        a = math.radians(tilt_axis_deg)
        d = ((xx - (n - 1) / 2) * math.cos(a) + (yy - (n - 1) / 2) * math.sin(a)) * pixel_size_a
        strip = torch.round(d / (strip_px * pixel_size_a))
        inten = torch.zeros(n, n, dtype=torch.float64)
        for s in torch.unique(strip).tolist():
            mask = strip == s
            inten[mask] = image(mean + s * strip_px * pixel_size_a * math.tan(math.radians(tilt_deg)))[mask]
    lam = (inten * dose_e_per_a2 * pixel_size_a**2).clamp_min(0)
    return torch.poisson(lam, generator=g)

"""Topaz-Denoise's pretrained 2-D models ("Topaz P"), loaded offline from the installed package.

Topaz (topaz-em, GPL-3) is an optional extra: it is imported only when a Topaz feature is used,
and its absence raises :class:`TopazUnavailableError` with the install line. The network classes
come from Topaz; the weights are read here, because Topaz's own loader fails on Python 3.11
(it resolves the weights relative to a module, which ``importlib.resources`` rejects, and falls back
to ``pkg_resources``, which is not installed). The files are plain ``state_dict`` pickles shipped in
the wheel under ``topaz/pretrained/denoise/``; they are opened through ``importlib.resources`` and
read with ``torch.load(weights_only=True)`` (tensors only: no code runs from the file). No network.

Each image is standardised (mean 0, std 1) before the network and the output is scaled back,
as Topaz does, so the result is in the input's units.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
from functools import lru_cache

import torch

from ..core.errors import ArgumentError, ConfigError

__all__ = ["TOPAZ_MODELS", "TopazUnavailableError", "load_topaz_model", "topaz_available", "topaz_denoise"]

INSTALL_HINT = ("pip install --no-deps topaz-em==0.3.20 tqdm h5py pandas psutil scikit-learn scipy pillow future "
                "(with the torch constraint; Topaz is GPL-3, hence an optional extra)")

# alias → (weights file, constructor in topaz.denoising.models / topaz.filters, keyword arguments);
# the architecture arguments are the ones Topaz pairs with each file.
TOPAZ_MODELS = {
    "unet": ("unet_L2_v0.2.2.sav", "UDenoiseNet", {"base_width": 11, "top_width": 5}),
    "unet-small": ("unet_small_L1_v0.2.2.sav", "UDenoiseNetSmall", {"width": 11, "top_width": 5}),
    "fcnn": ("fcnn_L1_v0.2.2.sav", "DenoiseNet2", {"base_filters": 64, "width": 11}),
    "affine": ("affine_L1_v0.2.2.sav", "AffineDenoise", {"max_size": 31}),
    "unet-v0.2.1": ("unet_L2_v0.2.1.sav", "UDenoiseNet", {"base_width": 7, "top_width": 3}),
}


class TopazUnavailableError(ConfigError):
    """Topaz-Denoise (optional) is not installed or its weights are missing."""


def topaz_available() -> bool:
    """True if the ``topaz`` package and its pretrained 2-D weights can be found (nothing is imported)."""
    spec = importlib.util.find_spec("topaz")
    if spec is None:
        return False
    try:
        return importlib.resources.files("topaz").joinpath("pretrained", "denoise", TOPAZ_MODELS["unet"][0]).is_file()
    except (ModuleNotFoundError, FileNotFoundError):
        return False


def _architecture(class_name: str, kwargs: dict) -> torch.nn.Module:
    try:
        module = importlib.import_module("topaz.filters" if class_name == "AffineDenoise"
                                         else "topaz.denoising.models")
    except ImportError as exc:
        raise TopazUnavailableError(f"Topaz-Denoise is not available ({exc}); install it: {INSTALL_HINT}") from None
    return getattr(module, class_name)(**kwargs)


@lru_cache(maxsize=4)
def _load_cpu(name: str) -> torch.nn.Module:
    if name not in TOPAZ_MODELS:
        raise ArgumentError("topaz_model", f" {name!r}: choose one of {', '.join(TOPAZ_MODELS)}")
    if importlib.util.find_spec("topaz") is None:
        raise TopazUnavailableError(f"Topaz-Denoise is not installed; install it: {INSTALL_HINT}")
    filename, class_name, kwargs = TOPAZ_MODELS[name]
    resource = importlib.resources.files("topaz").joinpath("pretrained", "denoise", filename)
    if not resource.is_file():
        raise TopazUnavailableError(f"Topaz weights {filename} not found in the installed topaz package; "
                                    f"reinstall it: {INSTALL_HINT}")
    with resource.open("rb") as fh:
        state = torch.load(fh, map_location="cpu", weights_only=True)
    model = _architecture(class_name, kwargs)
    model.load_state_dict(state)  # strict: a wrong architecture/file pairing fails loudly, never random weights
    return model.eval()


def load_topaz_model(name: str = "unet", device: torch.device | str = "cpu") -> torch.nn.Module:
    """The pretrained Topaz-Denoise 2-D model ``name`` (see ``TOPAZ_MODELS``) in eval mode on ``device``."""
    model = _load_cpu(name)
    return model.to(device) if torch.device(device).type != "cpu" else model


def _tiles(n: int, tile: int) -> list[int]:
    return list(range(0, n, tile)) if n > tile else [0]


@torch.no_grad()
def topaz_denoise(images: torch.Tensor, model: str = "unet", *, tile_px: int = 1024, padding_px: int = 128
                  ) -> torch.Tensor:
    """Apply a pretrained Topaz model to ``(H, W)`` or ``(n, H, W)`` images, each standardised on its own.

    Images larger than ``tile_px`` are processed in tiles with ``padding_px`` of context on each side
    (memory: the U-Net needs about 5 GB at 2048² in one piece).
    """
    x = torch.as_tensor(images)
    squeeze = x.ndim == 2
    x = x[None] if squeeze else x
    net = load_topaz_model(model, x.device)
    x = x.to(torch.float32)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    z = (x - mean) / std
    h, w = z.shape[-2:]
    out = torch.empty_like(z)
    for y0 in _tiles(h, tile_px):
        for x0 in _tiles(w, tile_px):
            y1, x1 = min(h, y0 + tile_px), min(w, x0 + tile_px)
            py0, px0 = max(0, y0 - padding_px), max(0, x0 - padding_px)
            py1, px1 = min(h, y1 + padding_px), min(w, x1 + padding_px)
            pred = net(z[:, None, py0:py1, px0:px1])[:, 0]
            out[:, y0:y1, x0:x1] = pred[:, y0 - py0:y1 - py0, x0 - px0:x1 - px0]
    result = out * std + mean
    return result[0] if squeeze else result

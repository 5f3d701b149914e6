"""difftem: differentiable, fast transmission electron microscopy simulation in PyTorch.

The public names load on first use (PEP 562), so ``import difftem`` — and with it the ``difftem`` command's first
moments — does not import torch: ``from difftem import simulate`` and ``difftem.simulate(cfg)`` work as before.
"""

import importlib as _importlib
import sys as _sys
import types as _types

from .core.threads import prefer_passive_waiting as _prefer_passive_waiting
from .core.version import __version__

_prefer_passive_waiting()  # before torch loads: see core/threads.py

#: Each public name and the module that defines it (imported on first access).
_LAZY = {
    "SimulationConfig": ".config", "load_config": ".config",
    "DifferentiableSimulator": ".simulate.differentiable",
    "SimulationResult": ".simulate.pipeline", "TiltSeriesResult": ".simulate.pipeline",
    "simulate": ".simulate.pipeline", "simulate_tilt_series": ".simulate.pipeline",
}

__all__ = ["DifferentiableSimulator", "SimulationConfig", "SimulationResult", "TiltSeriesResult", "load_config",
           "simulate", "simulate_tilt_series", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name], __name__), name)
    elif name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    else:  # a subpackage (``difftem.config``, ``difftem.io``, ...), as when they were imported eagerly
        try:
            value = _importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(_types.ModuleType):
    """The name ``simulate`` is the function, not the subpackage ``difftem.simulate`` of the same name: importing
    that subpackage (which binds it on this package) leaves the name to the function, as the eager import did."""

    def __setattr__(self, name: str, value) -> None:
        if name == "simulate" and value is _sys.modules.get(f"{__name__}.simulate"):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

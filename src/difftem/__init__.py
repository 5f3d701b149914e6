"""difftem: differentiable, fast transmission electron microscopy simulation in PyTorch."""

from .config import SimulationConfig, load_config  # noqa: E402
from .core.version import __version__
from .simulate.differentiable import DifferentiableSimulator  # noqa: E402
from .simulate.pipeline import SimulationResult, TiltSeriesResult, simulate, simulate_tilt_series  # noqa: E402

__all__ = ["DifferentiableSimulator", "SimulationConfig", "SimulationResult", "TiltSeriesResult", "load_config",
           "simulate", "simulate_tilt_series", "__version__"]

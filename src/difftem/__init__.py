"""difftem: differentiable, fast transmission electron microscopy simulation in PyTorch."""

__version__ = "0.1.0"

from .config import SimulationConfig, load_config  # noqa: E402
from .pipeline import SimulationResult, TiltSeriesResult, simulate, simulate_tilt_series  # noqa: E402
from .differentiable import DifferentiableSimulator  # noqa: E402

__all__ = ["DifferentiableSimulator", "SimulationConfig", "SimulationResult", "TiltSeriesResult", "load_config", "simulate", "simulate_tilt_series",
           "__version__"]

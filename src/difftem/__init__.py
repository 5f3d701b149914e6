"""difftem: differentiable, fast transmission electron microscopy simulation in PyTorch."""

__version__ = "0.1.0"

from .config import SimulationConfig, load_config  # noqa: E402
from .pipeline import SimulationResult, simulate  # noqa: E402

__all__ = ["SimulationConfig", "SimulationResult", "load_config", "simulate", "__version__"]

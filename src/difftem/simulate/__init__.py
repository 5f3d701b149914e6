"""Running the forward model from a config: set-up, simulate / simulate_tilt_series, the differentiable
simulator, and writing results."""

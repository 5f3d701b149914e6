"""Learning on top of the simulator: gradient estimators through shot noise, MTF fitting, denoising."""

"""The microscope's forward model, stage by stage: beam, scattering factors, potentials, multislice, optics,
detector, tilt geometry and dose. Plain functions and small dataclasses on tensors; units in every name."""

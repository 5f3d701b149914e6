"""Calibration to real data: CTF fits of micrographs and tilt series, detector and ice statistics, a simulation
config that reproduces them, and a likeness score (`difftem fit-ctf`, `difftem calibrate`)."""

"""TEM-simulator 1.3 input files (.inp) as difftem configs.

:mod:`.parser` reads the file format (its parameter tables, sections and values), :mod:`.translate` turns the
parsed sections into a SimulationConfig (:func:`load_inp`), :mod:`.ice_loss` holds the electron-loss physics
the translation needs, and :mod:`.emit` writes the result as commented YAML (:func:`to_yaml`).
"""

from .emit import to_yaml
from .ice_loss import BOHR_RADIUS_A, carbon_loss_fraction, screened_cross_sections_a2, temsim_ice_absorption_v
from .parser import PARAMETERS, InpError, parse_inp_text, read_table, read_transforms_file
from .translate import MappedKey, TemsimInput, load_inp, translate

__all__ = ["BOHR_RADIUS_A", "PARAMETERS", "InpError", "MappedKey", "TemsimInput", "carbon_loss_fraction",
           "load_inp", "parse_inp_text", "read_table", "read_transforms_file", "screened_cross_sections_a2",
           "temsim_ice_absorption_v", "to_yaml", "translate"]

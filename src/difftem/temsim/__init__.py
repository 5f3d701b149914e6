"""TEM-simulator 1.3 input files (.inp) as difftem configs: parser, translator, ice loss, YAML emitter."""

from .translate import (
                        BOHR_RADIUS_A,
                        PARAMETERS,
                        InpError,
                        TemsimInput,
                        carbon_loss_fraction,
                        load_inp,
                        parse_inp_text,
                        read_table,
                        read_transforms_file,
                        screened_cross_sections_a2,
                        temsim_ice_absorption_v,
                        to_yaml,
                        translate,
)

__all__ = ["BOHR_RADIUS_A", "PARAMETERS", "InpError", "TemsimInput", "carbon_loss_fraction", "load_inp",
           "parse_inp_text", "read_table", "read_transforms_file", "screened_cross_sections_a2",
           "temsim_ice_absorption_v", "to_yaml", "translate"]

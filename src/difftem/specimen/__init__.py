"""The specimen: atomic structures, particle types (assemblies, helices), their placement, ground truth."""

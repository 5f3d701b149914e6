"""Files: atomic writing (MRC, NPY, JSON, PNG, text), STAR tables, IMOD tilt files and plain-text tables.

Readers raise :class:`~difftem.core.errors.FormatError` naming the file (and line); writers replace a file in
one rename, so a reader never sees half a file.
"""

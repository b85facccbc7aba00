"""``dispel4py.core`` names, served by :mod:`d4p_hpc.workflow`."""

from d4p_hpc.workflow import DESCRIPTION, GROUPING, META, NAME, TYPE, WRITER, GenericPE

__all__ = ["DESCRIPTION", "GROUPING", "META", "NAME", "TYPE", "WRITER", "GenericPE"]

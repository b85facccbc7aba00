"""d4p-hpc's stand-in for the dispel4py package (see :mod:`d4p_hpc.compat`)."""

"""d4p-hpc: run dispel4py stream workflows on HPC batch clusters and locally."""

__version__ = "0.2.0"

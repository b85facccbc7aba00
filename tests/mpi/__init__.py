"""MPI-world tests (run under mpiexec with --with-mpi); a package so its conftest does not shadow tests/conftest."""

"""``python -m d4p_hpc`` is the ``d4p-hpc`` command."""

from d4p_hpc.cli import main

main()

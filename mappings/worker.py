"""``python -m d4p_hpc.mappings.worker``: the worker's path before 0.2, which job scripts rendered
by 0.1 and still queued run; the worker is :mod:`d4p_hpc.mappings.redis.worker`."""

from d4p_hpc.mappings.redis.worker import main

if __name__ == "__main__":
    main(prog_name="python -m d4p_hpc.mappings.worker")

"""``python -m d4p_hpc.mappings.redis_server``: the per-job Redis's path before 0.2, which job
scripts rendered by 0.1 and still queued run; it is :mod:`d4p_hpc.mappings.redis.server`."""

from d4p_hpc.mappings.redis.server import main

if __name__ == "__main__":
    main(prog_name="python -m d4p_hpc.mappings.redis_server")

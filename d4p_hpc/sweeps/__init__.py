"""Sweeps: one job per line of a sweep file, run as the elements of job arrays (README, "Many runs at
once: sweeps"): the file (:mod:`.tasks`), planning and submitting the arrays (:mod:`.submit`), and a
sweep's directory and state (:mod:`.sweep`)."""

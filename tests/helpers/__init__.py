"""What the tests share, by concern: ``runs`` (running d4p-hpc and reading what it wrote, waiting,
processes), ``dynamic`` (Redis servers and the dynamic mappings' graphs), ``clusters`` (the test
Slurm and PBS clusters), ``browser`` (headless Chromium over its DevTools socket), ``drawing``
(Graphviz). Fixtures stay in ``tests/conftest.py``; nothing imports conftest."""

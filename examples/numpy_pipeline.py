"""A numpy pipeline: arrays flow between PEs, and one result is an array.

What it shows
-------------
* ``MakeSignal`` (a ``ProducerPE``) builds, on its k-th call (k = 0, 1, ...),
  a deterministic 64-sample signal from ``np.arange`` whose frequency, trend
  and offset are derived from k (no randomness) and emits ``(k, array)``.
* ``Spectrum`` (an ``IterativePE``, 2 instances) normalises the signal
  (zero mean, unit variance) and returns ``(k, |rfft|)``: numpy arrays travel
  between PEs (pickled by the parallel mappings).
* ``Summarise`` (a ``GenericPE``) has two unconnected outputs, so both are
  workflow results:

  - ``summary``: ``(k, peak_bin, peak_magnitude)`` with plain ints/floats
    (JSON-friendly; the magnitude is rounded to 6 decimals);
  - ``head``: a small ``numpy.ndarray`` of 5 floats ``[k, m0, m1, m2, m3]``
    (the first four magnitudes, rounded), which JSON cannot hold, so d4p-hpc
    stores it in ``part-*.pickle`` files.

Run it
------
With d4p-hpc::

    d4p-hpc run examples/numpy_pipeline.py -m simple -i 100
    d4p-hpc run examples/numpy_pipeline.py -m multi -n 4 -i 100
    d4p-hpc run examples/numpy_pipeline.py -m mpi -n 4 -i 100

With dispel4py (stream-d4py)::

    dispel4py simple examples/numpy_pipeline.py -i 100

With ``-i 100`` each output holds 100 items, one per k; e.g. ``summary`` has
``(0, 1, 43.903638)`` and ``(99, 9, 40.718856)``, and ``head`` has
``array([1., 0., 15.156497, 40.052474, 5.068436])``.
"""

import numpy as np

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.core import GenericPE
from dispel4py.workflow_graph import WorkflowGraph

N_SAMPLES = 64


def make_signal(k):
    """The deterministic signal of iteration ``k``."""
    t = np.arange(N_SAMPLES, dtype=np.float64)
    cycles = 1 + k % 13  # whole cycles over the window: the peak lands in bin `cycles`
    ramp = (k % 7) * t / N_SAMPLES  # a trend that leaks into every bin
    return np.sin(2 * np.pi * cycles * t / N_SAMPLES) + 0.25 * np.cos(2 * np.pi * t / 8) + ramp + (k % 5)


def spectrum(signal):
    """Magnitude spectrum of the normalised signal."""
    norm = (signal - signal.mean()) / signal.std()
    return np.abs(np.fft.rfft(norm))


class MakeSignal(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.k = 0

    def _process(self, inputs):
        k = self.k
        self.k += 1
        return (k, make_signal(k))


class Spectrum(IterativePE):
    def __init__(self):
        IterativePE.__init__(self)

    def _process(self, data):
        k, signal = data
        return (k, spectrum(signal))


class Summarise(GenericPE):
    def __init__(self):
        GenericPE.__init__(self)
        self._add_input("input")
        self._add_output("summary")
        self._add_output("head")

    def process(self, inputs):
        k, mags = inputs["input"]
        peak = int(np.argmax(mags))
        self.write("summary", (k, peak, round(float(mags[peak]), 6)))
        head = np.concatenate(([float(k)], np.round(mags[:4], 6)))
        self.write("head", head)


def build():
    source = MakeSignal()
    spec = Spectrum()
    spec.numprocesses = 2
    summ = Summarise()
    g = WorkflowGraph()
    g.connect(source, "output", spec, "input")
    g.connect(spec, "output", summ, "input")
    return g


graph = build()

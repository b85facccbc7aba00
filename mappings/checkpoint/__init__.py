"""Checkpoints: consistent snapshots of a running stream, and what a resumed run starts from.

A checkpoint holds, for every process of the run, the state of its PE instances, how far each
root has fed, the items *in flight* to it, and the size of every output part file it writes
(:mod:`.store`: its format on disk, loading, and checking that a resume matches it; :mod:`.pe_state`:
the state of one PE).

How the snapshot is made consistent is the mapping's business:

* static mappings (simple, multi, mpi: :mod:`.snapshots`, which the core delegates to) use the
  Chandy-Lamport algorithm over their ordered process-to-process channels: process 0 takes its
  local snapshot and sends a marker on every channel; a process takes its own at the first marker
  it receives, and records what arrives on each other channel until that channel's marker. Nothing
  waits and nothing drains: the items recorded are the checkpoint's in-flight items, delivered
  again on resume;
* the dynamic mappings quiesce: the driver stops feeding, waits until no task is queued or running,
  and every worker then writes its copies and stateful instances (see :mod:`d4p_hpc.mappings.dynamic.loops`).

Every item is thus either before the checkpoint (its effects in the states and in the output bytes
the checkpoint keeps) or after it (replayed on resume); on resume every output part file is cut
back to its size in the checkpoint, so the outputs of all segments together are those of one
uninterrupted run, each item once.
"""

"""The benchmark harness: ``harness`` (train or load, export, build, measure, log), ``scenarios`` (what one
preset's bench measures), ``schedule`` and ``worker`` (interleaved timing in one process per backend),
``timing`` (the timing loops), ``stability`` (the reference workload read during a run) and ``roofline``."""

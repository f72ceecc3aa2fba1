"""What a run produces and where it goes: the result schema (``records``), latency statistics (``latency``),
result files (``files``), MLflow tracking (``tracking``) and the store's names and queries (``store``)."""

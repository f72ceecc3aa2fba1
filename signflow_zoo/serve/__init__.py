"""Serving: the streaming pipeline (``pipeline``), stream replay (``replay``), model files as served
(``modelfile``), hand motion and landmark payloads (``motion``, ``payload``)."""

"""The model and what makes one: the zoo registry of presets (``zoo`` + ``zoo.toml``), the transformer
(``network``), training, calibration, checkpoints, ONNX export and the MLflow model registry."""

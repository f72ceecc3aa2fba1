"""The model and what makes one: the zoo registry of presets (``zoo`` + ``zoo.toml``), the transformer
(``network``), training, calibration, metrics, checkpoints and ONNX export. (Publishing trained weights to
MLflow's Model Registry needs the artifact store, so it lives in ``backends/mlflow_models.py``.)"""

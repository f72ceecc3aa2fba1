import pytest


@pytest.fixture(scope="session")
def lightweight_artifacts(tmp_path_factory):
    """The lightweight preset (untrained weights: timing does not depend on them) as every artifact."""
    import torch

    from signflow_zoo.artifacts import serving_metadata
    from signflow_zoo.checkpoint import save_checkpoint
    from signflow_zoo.export import export_to_onnx, optimize_onnx_model
    from signflow_zoo.model import build_model
    from signflow_zoo.runners import Artifacts
    from signflow_zoo.zoo import get_model_config

    folder = tmp_path_factory.mktemp("bench-artifacts")
    torch.manual_seed(0)
    entry = get_model_config("lightweight")
    model = build_model(entry, num_classes=20).eval()
    labels = [f"s{i}" for i in range(20)]
    ckpt = save_checkpoint(folder / "m.pt", model, {"preset": "lightweight", "labels": labels})
    meta = serving_metadata({"preset": "lightweight", "labels": labels, "model_kwargs": model.init_kwargs})
    export_to_onnx(model, folder / "m.onnx", metadata=meta, exporter="legacy", verify=False)
    optimize_onnx_model(folder / "m.onnx", folder / "m.opt.onnx", entry.heads, entry.d_model)
    return Artifacts(preset="lightweight", num_classes=20, labels=labels, model_kwargs=model.init_kwargs,
                     checkpoint=ckpt, onnx=folder / "m.onnx", onnx_optimized=folder / "m.opt.onnx", workdir=folder)

"""``signflow-zoo predict`` and ``signflow-zoo stream``: serve a model file on recorded clips.

Thin: parse, call :mod:`signflow_zoo.serve.pipeline` (``predict``) or :func:`signflow_zoo.serve.replay.replay_stream`
(``stream``), print. Clip inputs:

- a SignFlow recording: ``.npy`` [frames, 225]; a ``.pose`` file (MediaPipe Holistic, first person);
- one LSFB-ISOL instance: any of its files ``ROOT/poses/<left_hand|right_hand|pose>/ID.npy``, or the
  data set root with ``--instance ID``;
- a directory: every clip of an LSFB-ISOL root (``instances.csv``), of a folder with ``labels.csv``
  (``.npy`` or ``.pose`` files) or of SignFlow recordings named ``<sign>_<12 hex>.npy``; the true labels
  are then printed next to the predictions.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from signflow_zoo.cli.argtypes import in_range
from signflow_zoo.common.limits import FPS, REST_FRAMES, TEMPERATURE, THREADS, THRESHOLD


@dataclass
class ClipInput:
    name: str
    raw: np.ndarray
    true_label: str | None = None


# -- reading clips ---------------------------------------------------------------------------------
def read_clips(path: str | Path, instance: str | None = None) -> list[ClipInput]:
    """The clip(s) a ``predict``/``stream`` FILE argument names (see the module docstring)."""
    from signflow_zoo.data.formats import read_clips as read

    return [ClipInput(c.name, c.raw, c.label) for c in read(path, instance)]


# -- shared ----------------------------------------------------------------------------------------
def _pipeline(args):
    from signflow_zoo.serve.pipeline import PipelineConfig, SignFlowInferencePipeline

    cfg = PipelineConfig(threads=args.threads)
    if args.threshold is not None:  # the cap on raised thresholds never lowers the one asked for
        cfg.confidence_threshold = args.threshold
        cfg.max_threshold = max(cfg.max_threshold, args.threshold)
    if getattr(args, "temperature", None) is not None:
        cfg.temperature = args.temperature
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        pipe = SignFlowInferencePipeline(args.model, backend=args.backend, config=cfg.validate(),
                                         labels=getattr(args, "labels", None))
    for w in caught:  # e.g. the PyTorch fallback: say it where the user looks
        print(f"note: {w.message}", file=sys.stderr)
    return pipe


def _add_common(s) -> None:
    s.add_argument("--model", required=True, metavar="PATH", help="model file: .onnx or .pt (carries labels etc.)")
    s.add_argument("--labels", metavar="FILE", help="class labels in output order, for a model file without them "
                   "(exported the original SignFlow way): a JSON list, or one label per line; replaces the file's own")
    s.add_argument("--backend", metavar="NAME", help="backend to run it (default: by file type: .onnx -> onnx-cpu, "
                   ".pt -> torch-eager); any registered backend, see `signflow-zoo backends`")
    s.add_argument("--instance", metavar="ID", help="LSFB-ISOL: the instance id, with the data set root as FILE")
    s.add_argument("--format", choices=["text", "json"], default="text")
    s.add_argument("--threshold", type=in_range(THRESHOLD), metavar="P",
                   help=f"confidence threshold (default 0.7); {THRESHOLD.what}")
    s.add_argument("--temperature", type=in_range(TEMPERATURE), metavar="T",
                   help=f"softmax temperature (default: the model's calibration, else 1); {TEMPERATURE.what}")
    s.add_argument("--threads", type=in_range(THREADS), metavar="N",
                   help=f"backend threads (default: the runtime's); {THREADS.what}")


def _alts(pred) -> str:
    return ", ".join(f"{label} {p:.3f}" for label, p in pred.alternatives)


def _own_stdout(command):
    """``command(args, out)`` run as ``command(args)``: ``out`` is the real stdout, for the command's output, while
    anything else printed meanwhile (a backend plugin's chatter) goes to stderr (:mod:`signflow_zoo.cli.output`)."""

    @functools.wraps(command)
    def run(args) -> int:
        from signflow_zoo.cli.output import command_output

        with command_output() as out:
            return command(args, out)

    return run


# -- predict ---------------------------------------------------------------------------------------
@_own_stdout
def cmd_predict(args, out) -> int:
    clips = read_clips(args.file, args.instance)
    pipe = _pipeline(args)
    results = []
    try:
        for clip in clips:
            pred = pipe.process_sequence(clip.raw)
            results.append((clip, pred))
    finally:
        pipe.close()
    known = [(c, p) for c, p in results if c.true_label is not None]
    correct = sum(c.true_label == p.candidate for c, p in known)
    if args.format == "json":
        doc = {"model": str(args.model), "backend": pipe.backend_name, "predictions": [
            {"clip": c.name, "frames": int(len(c.raw)), "true_label": c.true_label, **p.to_dict()} for c, p in results]}
        if known:
            doc["top1_accuracy"] = correct / len(known)
        print(json.dumps(doc, indent=1), file=out)
        return 0
    for clip, pred in results:
        truth = f"  [true: {clip.true_label}{'' if clip.true_label == pred.candidate else ', WRONG'}]" \
            if clip.true_label is not None else ""
        if pred.accepted:
            head = f"{pred.label} (confidence {pred.confidence:.3f})"
        else:
            head = f"NONE (best {pred.candidate} {pred.confidence:.3f} < threshold {pred.threshold:.2f})"
        print(f"{clip.name}: {head}{truth}", file=out)
        for rank, (label, p) in enumerate(pred.alternatives, 1):
            print(f"  {rank}. {label:<40} {p:.3f}", file=out)
    if len(known) > 1:
        print(f"top-1 accuracy: {correct}/{len(known)} = {correct / len(known):.3f} (backend {pipe.backend_name})",
              file=out)
    return 0


# -- stream ----------------------------------------------------------------------------------------
@_own_stdout
def cmd_stream(args, out) -> int:
    from signflow_zoo.serve.replay import check_stream_clips, replay_stream

    clips = [c for f in args.file for c in read_clips(f, args.instance)]
    check_stream_clips([c.raw for c in clips], [c.name for c in clips])  # pixel coordinates: refused before loading
    pipe = _pipeline(args)
    as_json = args.format == "json"
    if not as_json:
        mode = "real time" if args.realtime else "as fast as possible"
        print(f"streaming {len(clips)} clip(s) at {args.fps:g} fps ({mode}) on {pipe.backend_name}, "
              f"model {Path(args.model).name}", file=out)

    def show(pred, clip_index) -> None:
        truth = None if clip_index is None else clips[clip_index].true_label
        t = pred.frame_index / args.fps
        if as_json:
            print(json.dumps({"t": round(t, 3), "true_label": truth, **pred.to_dict()}), file=out, flush=True)
            return
        if pred.accepted:
            what = f"{pred.label} {pred.confidence:.3f}"
        else:
            what = f"NONE (best {pred.candidate} {pred.confidence:.3f} < {pred.threshold:.2f})"
        print(f"[frame {pred.frame_index:5d}  t={t:7.2f}s] {what}   top-{len(pred.alternatives)}: {_alts(pred)}   "
              f"latency {pred.latency_ms:.1f} ms (model {pred.inference_ms:.1f})   window {pred.frames} frames"
              + (f"   [true: {truth}]" if truth else ""), file=out, flush=True)

    try:
        summary = replay_stream(pipe, [c.raw for c in clips], args.rest_frames, args.fps, args.realtime, show)
    finally:
        pipe.close()
    if as_json:
        print(json.dumps({"summary": summary}), file=out)
        return 0
    lat = summary["latency_ms"]
    print(f"sentence: {' '.join(summary['sentence']) or '(empty)'}", file=out)
    if lat["count"]:
        print(f"latency, last frame of a sign -> prediction: p50 {lat['p50_ms']:.1f} ms, p90 {lat['p90_ms']:.1f} ms, "
              f"max {lat['max_ms']:.1f} ms over {lat['count']} sign(s)", file=out)
    late = summary["frames_late"]
    print(f"{summary['frames']} frames in {summary['wall_s']:.2f} s ({summary['frames_per_s'] or 0:.0f} frames/s)"
          + (f"; {late} frame(s) processed more than one frame late" if late else ""), file=out)
    return 0


def register(subparsers) -> None:
    """Add ``predict`` and ``stream`` to the main CLI's subparsers."""
    s = subparsers.add_parser("predict", help="classify a recorded clip (or every clip of a folder) with a model file",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("file", metavar="FILE", help="SignFlow .npy [frames, 225], .pose file, LSFB poses/<part>/ID.npy, or a folder")
    _add_common(s)
    s.set_defaults(func=cmd_predict)

    s = subparsers.add_parser("stream", help="replay clips frame by frame through the streaming pipeline",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("file", metavar="FILE", nargs="+", help="clip(s) to replay, in order, with rest frames between")
    _add_common(s)
    s.add_argument("--fps", type=in_range(FPS), default=30.0, help=f"frame rate of the replay (default 30); {FPS.what}")
    s.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="pace frames at --fps like a camera (default), or --no-realtime: as fast as possible")
    s.add_argument("--rest-frames", type=in_range(REST_FRAMES), default=20,
                   help=f"still frames before each clip and after the last (default 20); {REST_FRAMES.what}")
    s.set_defaults(func=cmd_stream)

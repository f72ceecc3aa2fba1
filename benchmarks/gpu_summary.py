"""The short table that benchmarks/gpu_check.sh prints last: every GPU-relevant row of the bench result
files, and the targets for ``large`` on one GPU against torch.compile.

Targets: batch 1 p50 <= 0.15 ms and batch 256 >= 250,000 sequences/s (batch / p50), ahead of the
torch.compile peer a PyTorch user would pick (our ``torch-compile`` / ``torch-compile-bf16`` rows).

    python benchmarks/gpu_summary.py $SIGNFLOW_ZOO_HOME/results/bench-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PRESET_ORDER = ["lightweight", "baseline", "medium", "large", "xlarge"]
TARGET_PRESET, TARGET_B1_MS, TARGET_B256_SEQ_S = "large", 0.15, 250_000
PEERS = ("torch-compile", "torch-compile-bf16")
CPU_ONLY = ("onnx-cpu", "onnx-optimized", "onnx-int8")


def load(paths: list[str]) -> list[dict]:
    records: dict[str, dict] = {}
    for p in paths:
        if Path(p).is_file():
            records.update((r["result_id"], r) for r in json.loads(Path(p).read_text()).get("records", []))
    return list(records.values())


def p50(rec: dict, batch: int) -> float | None:
    lat = (rec.get("latency") or {}).get(str(batch))
    return lat["p50_ms"] if lat else None


def note(rec: dict) -> str:
    if rec.get("status") != "ok":
        return f"{rec.get('status')}: {rec.get('reason', '')[:110]}"
    d = rec.get("describe") or {}
    parts = []
    if "compile_total_s" in d:
        parts.append(f"compile {d['compile_total_s']} s")
    if "fixed_shapes" in d:
        parts.append(f"graphs {','.join(d['fixed_shapes'])}" + (" (captured)" if d.get("cuda_graph") else ""))
    par = rec.get("parity") or {}
    if par:
        parts.append(f"parity {par.get('max_rel', float('nan')):.1e}")
    return "; ".join(parts)


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(paths: list[str]) -> int:
    records = [r for r in load(paths) if r.get("backend") not in CPU_ONLY]
    if not records:
        print("gpu_summary: no records in", ", ".join(paths))
        return 1
    records.sort(key=lambda r: (PRESET_ORDER.index(r["preset"]) if r["preset"] in PRESET_ORDER else 99, r["backend"]))
    print("| preset | backend | b1 p50 ms | b256 p50 ms | b256 seq/s | note |")
    print("|---|---|---|---|---|---|")
    for r in records:
        b1, b256 = p50(r, 1), p50(r, 256)
        print(f"| {r['preset']} | {r['backend']} | {fmt(b1, '.3f')} | {fmt(b256, '.2f')} | "
              f"{fmt(256e3 / b256 if b256 else None, ',.0f')} | {note(r)} |")
    target = [r for r in records if r["preset"] == TARGET_PRESET and r.get("status") == "ok"]
    if not target:
        print(f"\n{TARGET_PRESET}: no successful GPU row, targets not checked")
        return 0
    print()
    # only rows with a p50 at that batch take part (the `or` never applies)
    best1 = min((r for r in target if p50(r, 1)), key=lambda r: p50(r, 1) or 0.0, default=None)
    best256 = min((r for r in target if p50(r, 256)), key=lambda r: p50(r, 256) or 0.0, default=None)
    peers = {r["backend"]: r for r in target if r["backend"] in PEERS}
    if best1:
        v = p50(best1, 1)
        assert v is not None
        print(f"{TARGET_PRESET} batch 1: best {best1['backend']} {v:.3f} ms; target <= {TARGET_B1_MS} ms "
              + ("met" if v <= TARGET_B1_MS else f"MISSED by {v - TARGET_B1_MS:.3f} ms ({v / TARGET_B1_MS:.2f}x)"))
    if best256:
        ms = p50(best256, 256)
        assert ms is not None
        s = 256e3 / ms
        print(f"{TARGET_PRESET} batch 256: best {best256['backend']} {s:,.0f} seq/s; target >= {TARGET_B256_SEQ_S:,} "
              + ("met" if s >= TARGET_B256_SEQ_S else f"MISSED ({s / TARGET_B256_SEQ_S:.2f}x of target)"))
    for name, peer in peers.items():
        for b, best in ((1, best1), (256, best256)):
            peer_ms, best_ms = p50(peer, b), (p50(best, b) if best else None)
            if best and peer_ms and best_ms and best["backend"] not in PEERS:
                print(f"  vs {name} at batch {b}: {best['backend']} is {peer_ms / best_ms:.2f}x "
                      f"({best_ms:.3f} vs {peer_ms:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

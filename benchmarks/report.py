"""Markdown tables from a results JSON written by ``run.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = [("train_ex_s", "train"), ("log_prob_ex_s", "log_prob"), ("sample_ex_s", "sample")]


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def verdicts(rows):
    """Per (dataset, model): flowforge / fastest peer for each speed, NLL gap to the best peer."""
    out = []
    keys = sorted({(r["dataset"], r["model"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for ds, model in keys:
        group = [r for r in rows if r["dataset"] == ds and r["model"] == model and "test_nll" in r]
        ours = [r for r in group if r["library"] == "flowforge"]
        peers = [r for r in group if r["library"] != "flowforge"]
        if not ours or not peers:
            continue
        o = ours[0]
        v = {"dataset": ds, "model": model}
        for key, label in METRICS:
            best = max(peers, key=lambda r: r[key])
            v[label] = (o[key] / best[key], best["library"])
        best = min(peers, key=lambda r: r["test_nll"])
        v["nll_gap"] = (o["test_nll"] - best["test_nll"], best["library"])
        out.append(v)
    return out


def write_report(res: dict, path: Path) -> None:
    cfg = res["config"]
    lines = [
        "# Benchmark results",
        "",
        f"torch {res['torch']}, Python {res['python']}, {res['threads']} thread(s); "
        f"{cfg['layers']} layers, hidden ({cfg['hidden']}, {cfg['hidden']}), {cfg['bins']} bins, "
        f"batch {cfg['batch']}, Adam lr {cfg['lr']}, {cfg['steps']} steps for every model; "
        f"peak RSS {res.get('peak_rss_MB', 0):.0f} MB. Peer versions: "
        + ", ".join(f"{k} {v}" for k, v in res["versions"].items() if k != "flowforge")
        + ".",
        "",
        "Speeds are examples/s (best of repeats; the machine is shared, so expect noise of "
        "10-30%). *saved* = MB autograd keeps for backward in one training step. *% mm* = "
        "achieved training FLOP/s (matmuls counted by FlopCounterMode) over the in-process "
        "`torch.mm` ceiling at (batch, hidden)². NLL in nats per example, raw data units.",
        "",
    ]
    for ds in dict.fromkeys(r["dataset"] for r in res["results"]):
        ceil = res["matmul_ceiling_GFLOP_s"].get(ds, 0)
        lines += [
            f"## {ds} (mm ceiling {ceil:.1f} GFLOP/s)",
            "",
            "| model | library | params | train/s | log_prob/s | sample/s | saved MB | % mm "
            "| test NLL | note |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in res["results"]:
            if r["dataset"] != ds:
                continue
            lines.append(
                f"| {r['model']} | {r['library']} | {r['params']:,} | "
                f"{_fmt(r.get('train_ex_s'), ',.0f')} | {_fmt(r.get('log_prob_ex_s'), ',.0f')} | "
                f"{_fmt(r.get('sample_ex_s'), ',.0f')} | {_fmt(r.get('saved_MB'), '.1f')} | "
                f"{_fmt(100 * r['fraction_of_ceiling'] if 'train_ex_s' in r else None, '.0f')}"
                f" | {_fmt(r.get('test_nll'), '.3f')} | {r.get('error', r.get('note', ''))} |"
            )
        lines.append("")
    v = verdicts(res["results"])
    if v:
        lines += [
            "## flowforge against the fastest / best peer",
            "",
            "Ratios are flowforge / fastest peer (target >= 1.5); NLL gap is flowforge minus the "
            "best peer (target <= 0).",
            "",
            "| data | model | train | log_prob | sample | NLL gap |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for x in v:
            cells = [f"{x[m][0]:.2f}x ({x[m][1]})" for _, m in METRICS]
            lines.append(
                f"| {x['dataset']} | {x['model']} | "
                + " | ".join(cells)
                + f" | {x['nll_gap'][0]:+.3f} ({x['nll_gap'][1]}) |"
            )
        lines.append("")
    if res["skipped"]:
        lines += ["## Skipped", ""]
        seen = set()
        for s in res["skipped"]:
            key = (s["library"], s["model"], s["reason"])
            if key not in seen:
                seen.add(key)
                lines.append(f"- {s['library']} {s['model']}: {s['reason']}")
        lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    src = Path(sys.argv[1])
    write_report(json.loads(src.read_text()), src.with_suffix(".md"))

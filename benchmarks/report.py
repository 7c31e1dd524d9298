"""Markdown tables from a results JSON written by ``run.py``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

METRICS = [("train_ex_s", "train"), ("log_prob_ex_s", "log_prob"), ("sample_ex_s", "sample")]

# Peers whose model of that name is a different model, not another implementation of ours:
# left out of the speed ratios (their NLL is still compared when the parameter count matches).
DIFFERENT_MODEL = {
    ("normflows", "maf"): (
        "normflows' `MaskedAffineAutoregressive` is an IAF in the density direction: "
        "`NormalizingFlow.log_prob` runs each layer's `inverse`, which loops over the D "
        "dimensions with one MADE pass each, while `sample` runs `forward`, one MADE pass (the "
        "MADE reads the noise side). So its log_prob is D passes and its sampling one pass, the "
        "reverse of a MAF; it is left out of the maf speed ratios"
    ),
}


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def nll_stats(r) -> tuple[float, float | None, int]:
    """(mean, sd or None, number of seeds) of a row's test NLL; old one-seed rows have no sd."""
    seeds = r.get("test_nll_seeds") or [r["test_nll"]]
    return r["test_nll"], r.get("test_nll_sd"), len(seeds)


def _se(r) -> float | None:
    _, sd, n = nll_stats(r)
    return None if sd is None else sd / math.sqrt(n)


def _fmt_nll(r) -> str:
    if "test_nll" not in r:
        return "–"
    mean, sd, _ = nll_stats(r)
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def _k(n: int) -> str:
    return f"{n / 1000:.0f}k" if n >= 10_000 else f"{n:,}"


def verdicts(rows, floors=None):
    """Per (dataset, model): flowforge / fastest peer for each speed, NLL gap to the best peer.

    Speed ratios leave out the peers in ``DIFFERENT_MODEL``. The NLL gap is taken against the
    best mean NLL among the other peers with our parameter count, to 0.1% (equal architecture); the
    rest are listed in ``other_size``. ``<metric>_max`` is the conditioner floor's speed over
    the fastest peer's: the largest ratio any implementation could reach. ``nll_noise`` is the
    combined standard error of the two means, ``sqrt(se_ours^2 + se_peer^2)`` with
    ``se = sd / sqrt(seeds)`` (None with one seed).
    """
    out = []
    keys = sorted({(r["dataset"], r["model"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for ds, model in keys:
        group = [r for r in rows if r["dataset"] == ds and r["model"] == model and "test_nll" in r]
        ours = [r for r in group if r["library"] == "flowforge"]
        peers = [r for r in group if r["library"] != "flowforge"]
        if not ours or not peers:
            continue
        o = ours[0]
        v = {"dataset": ds, "model": model, "nll": nll_stats(o)}
        same = [r for r in peers if (r["library"], model) not in DIFFERENT_MODEL]
        floor = (floors or {}).get(ds, {}).get(model, {})
        for key, label in METRICS:
            v[label] = v[label + "_max"] = None
            if same:
                best = max(same, key=lambda r: r[key])
                v[label] = (o[key] / best[key], best["library"])
                if key in floor:
                    v[label + "_max"] = floor[key] / best[key]
        # equal size: within 0.1% (normflows' LU 1x1 convolution stores its masked-out
        # triangles as parameters, so its Glow counts 64 more for the same map)
        equal = [r for r in same if abs(r["params"] - o["params"]) <= 1e-3 * o["params"]]
        v["nll_gap"] = v["nll_noise"] = v["within_noise"] = None
        if equal:
            best = min(equal, key=lambda r: r["test_nll"])
            gap = o["test_nll"] - best["test_nll"]
            v["nll_gap"] = (gap, best["library"])
            se_o, se_b = _se(o), _se(best)
            if se_o is not None and se_b is not None:
                v["nll_noise"] = math.hypot(se_o, se_b)
                v["within_noise"] = abs(gap) < v["nll_noise"]
        v["other_size"] = [
            (r["library"], nll_stats(r)[0], nll_stats(r)[1], r["params"], o["params"])
            for r in sorted(peers, key=lambda r: r["test_nll"])
            if r not in equal
        ]
        out.append(v)
    return out


def _gap_cell(x) -> str:
    if x["nll_gap"] is None:
        return "– (no peer of equal size)"
    gap, lib = x["nll_gap"]
    if x["nll_noise"] is None:
        return f"{gap:+.3f} ({lib})"
    verdict = "within noise" if x["within_noise"] else ("**worse**" if gap > 0 else "better")
    return f"{gap:+.3f} ± {x['nll_noise']:.3f} ({lib}), {verdict}"


def _other_cell(x) -> str:
    return "; ".join(
        f"{lib} {mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}")
        + (f" ({x['model']} in the other direction)" if (lib, x["model"]) in DIFFERENT_MODEL
           else f" with {_k(p)} params vs our {_k(ours)}")
        for lib, mean, sd, p, ours in x["other_size"]
    )  # fmt: skip


def _seeds(cfg: dict) -> str:
    seeds = cfg.get("seeds", [cfg.get("seed", 0)])
    return (
        f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]})"
    )


def write_report(res: dict, path: Path) -> None:
    cfg = res["config"]
    lines = [
        "# Benchmark results",
        "",
        f"torch {res['torch']}, Python {res['python']}, {res['threads']} thread(s); "
        f"{cfg['layers']} layers, hidden ({cfg['hidden']}, {cfg['hidden']}), {cfg['bins']} bins, "
        f"batch {cfg['batch']}, Adam lr {cfg['lr']}, {cfg['steps']} steps for every model, "
        f"{_seeds(cfg)}; "
        f"peak RSS {res.get('peak_rss_MB', 0):.0f} MB. Peer versions: "
        + ", ".join(f"{k} {v}" for k, v in res["versions"].items() if k != "flowforge")
        + ".",
        "",
        "Speeds are examples/s: training from the median step of the run, log_prob and "
        "sampling the best of repeated calls (the machine is shared, so expect noise of "
        "10-30%). *floor*: flowforge's conditioner networks and the Adam step alone, fed "
        "tensors of the shapes they see inside the flow (benchmarks/floor.py): the speed no "
        "implementation of the architecture can beat (roughly: it is timed like the rest). "
        "*saved* = MB autograd keeps for backward in one training step. *% mm* = "
        "achieved training FLOP/s (matmuls counted by FlopCounterMode) over the in-process "
        "`torch.mm` ceiling at (batch, hidden)². NLL in nats per example, raw data units; "
        "with several seeds, mean ± sd over the seeds (each seed sets the initialisation and "
        "the batch order, the same seeds for every library), and speeds are the best over the "
        "seeds.",
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
        floors = res.get("floor", {}).get(ds, {})
        for i, r in enumerate(res["results"]):
            if r["dataset"] != ds:
                continue
            first = i == 0 or res["results"][i - 1]["model"] != r["model"]
            if first and r["model"] in floors:
                f = floors[r["model"]]
                lines.append(
                    f"| {r['model']} | *floor* | | *{f['train_ex_s']:,.0f}* | "
                    f"*{f['log_prob_ex_s']:,.0f}* | | | | | the conditioners and Adam alone |"
                )
            lines.append(
                f"| {r['model']} | {r['library']} | {r['params']:,} | "
                f"{_fmt(r.get('train_ex_s'), ',.0f')} | {_fmt(r.get('log_prob_ex_s'), ',.0f')} | "
                f"{_fmt(r.get('sample_ex_s'), ',.0f')} | {_fmt(r.get('saved_MB'), '.1f')} | "
                f"{_fmt(100 * r['fraction_of_ceiling'] if 'train_ex_s' in r else None, '.0f')}"
                f" | {_fmt_nll(r)} | {r.get('error', r.get('note', ''))} |"
            )
        lines.append("")
    v = verdicts(res["results"], res.get("floor"))
    if v:
        models = {r["model"] for r in res["results"]}
        excluded = [
            f"{lib} {model}: {why}."
            for (lib, model), why in DIFFERENT_MODEL.items()
            if model in models and any(r["library"] == lib for r in res["results"])
        ]
        lines += [
            "## flowforge against the fastest / best peer",
            "",
            "Ratios are flowforge / fastest peer (target >= 1.5). NLL gap is flowforge's mean "
            "test NLL minus the best mean among the peers with the same parameter count (equal "
            "architecture, to 0.1%; target <= 0), ± the combined standard error "
            "sqrt(se_ours² + se_peer²), se = sd / sqrt(seeds). A gap is *within noise* when "
            "|gap| < that combined standard error (about one standard error: a loose test, so "
            "a gap outside it is a lead to check, not proof); with one seed no verdict is "
            "given. Peers of another size, or with a different model under the name, are listed "
            "on the right and not compared. *max* is the floor's speed over the fastest peer's: "
            "the largest ratio any implementation of this architecture could reach.",
            "",
        ]
        lines += [f"- {e}" for e in excluded] + ([""] if excluded else [])
        lines += [
            "| data | model | train | log_prob | sample | NLL (ours) | NLL gap "
            "| other-size peers |",
            "|---|---|---:|---:|---:|---:|---|---|",
        ]
        for x in v:
            cells = [
                "–"
                if x[m] is None
                else f"{x[m][0]:.2f}x ({x[m][1]})"
                + ("" if x[m + "_max"] is None else f"; max {x[m + '_max']:.2f}x")
                for _, m in METRICS
            ]
            mean, sd, _ = x["nll"]
            ours = f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"
            lines.append(
                f"| {x['dataset']} | {x['model']} | "
                + " | ".join(cells)
                + f" | {ours} | {_gap_cell(x)} | {_other_cell(x)} |"
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

"""The acceptance targets of ``dfa bench`` (speed targets live here, never in unit tests), checked
against a run, and the table printed after it.
"""
from __future__ import annotations

from dfa.stages.bench.timing import ratio


# Acceptance targets (issue): speed targets live here, never in unit tests.
TARGETS = {"sinkhorn.speedup": 1.2, "sinkhorn.speedup_vs_loop": 5.0, "sinkhorn.speedup_to_tol": 1.2,
           "sinkhorn.speedup_vs_loop_to_tol": 5.0, "train_step.speedup": 5.0, "crf.speedup": 1.6}


def check_targets(res: dict) -> dict:
    """Each acceptance target vs this run (the worst shape for Sinkhorn).

    With ``--smoke`` the sizes are far below the targets' (tiny ViT, 64 px CRF), so
    ``met`` is null: the smoke run checks that the benchmark works, not the speed.
    """
    def get(key):
        head, tail = key.split(".")
        if head not in res:
            return None
        if head == "sinkhorn":
            vals = [v[tail] for v in res["sinkhorn"].values() if isinstance(v, dict) and tail in v]
            return min(vals) if vals and None not in vals else None
        return res[head].get(tail)
    out = {}
    for key, target in TARGETS.items():
        val = get(key)
        met = None if val is None or res["smoke"] else bool(val >= target)
        out[key] = {"target": target, "measured": val, "met": met}
    return out


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def cell(ms, rng, unit="ms"):
        return escape(f"{ms:g} {unit} [{rng[0]:g}–{rng[1]:g}]")

    t = Table(title=escape("dfa bench: median [min–max] over repeats; speedup = ratio of medians"))
    for col in ("benchmark", "ours", "peer", "speedup"):
        t.add_column(col)
    def sinkhorn_rows(sk: dict, where: str) -> None:
        for shape in ("400x21", "1600x81"):
            r = sk[shape]
            t.add_row(f"sinkhorn {sk['batch']}×{shape} ({where}), 100 it", cell(r["ours_ms"], r["ours_ms_range"]),
                      escape(f"POT batch {r['pot_batch_ms']} ms / loop {r['pot_loop_ms']:g} ms"),
                      f"{r['speedup_vs_batch']}× / {r['speedup_vs_loop']}×")
            t.add_row("", f"to tol: {r['ours_to_tol_ms']:g} ms ({r['ours_iters_to_tol']} it)",
                      escape(f"POT batch {r['pot_batch_to_tol_ms']} ms / loop {r['pot_loop_to_tol_ms']:g} ms "
                             f"({r['pot_loop_iters_to_tol']} it)"),
                      f"{ratio(r['pot_batch_to_tol_ms'], r['ours_to_tol_ms'])}× / {r['speedup_vs_loop_to_tol']}×")

    if "sinkhorn" in res:
        sinkhorn_rows(res["sinkhorn"], "cpu")
    if "train_step" in res:
        tr = res["train_step"]
        t.add_row(f"train step, cached ({tr['arch'].split(' ')[0]})", cell(tr["cached_ms"], tr["cached_ms_range"]),
                  f"online {cell(tr['online_ms'], tr['online_ms_range'])}", f"{tr['speedup']}×")
    if "crf" in res:
        cr = res["crf"]
        t.add_row(f"CRF {cr['images']}×{cr['size'][0]}², {cr['workers']} workers",
                  cell(cr["parallel_s"], cr["parallel_s_range"], "s"),
                  f"serial {cell(cr['serial_s'], cr['serial_s_range'], 's')}",
                  f"{cr['speedup']}× (identical={cr['identical']})")
        t.add_row("", escape(f"warm pool {cr['warm_s']:g} s; start-up {cr['pool_startup_s']:g} s"), "",
                  f"{cr['speedup_warm']}× warm")
    if "portable" in res:
        po = res["portable"]
        base = po["modes"]["default"]
        for mode in ("avx2", "compatible"):
            m = po["modes"][mode]
            t.add_row(f"portable {mode} ({'/'.join(m['capability'])}), {po['rounds']} processes",
                      f"cached {m['cached_ms']:g} / online {m['online_ms']:g} ms",
                      f"default ({'/'.join(base['capability'])}) {base['cached_ms']:g} / {base['online_ms']:g} ms",
                      f"cost {m['cost_cached']}× / {m['cost_online']}×")
    pl = res["pipeline"]
    t.add_row("pipeline total", f"{pl['total_wall_s']} s" if pl["stages"] else "—",
              f"max RSS {pl['max_peak_rss_mib']} MiB" if pl["stages"] else pl["note"], "")
    if "gpu" in res:
        g = res["gpu"]
        t.add_row("gpu", str(g.get("encoder_images_per_s", "—")) + " img/s" if "skipped" not in g else "—",
                  g.get("skipped") or f"train {g['train_iters_per_s']} it/s, peak frac {g['encoder_peak_fraction']}",
                  "")
        if "sinkhorn" in g:
            sinkhorn_rows(g["sinkhorn"], "cuda")
    if "search_scaling" in res:
        sc = res["search_scaling"]
        if "skipped" in sc:
            t.add_row("search workers", "—", escape(sc["skipped"]), "")
        else:
            t.add_row(f"search, 2 workers ({sc['storage']})", f"{sc['trials_per_min_2_workers']} trials/min",
                      f"1 worker {sc['trials_per_min_1_worker']} trials/min", f"{sc['speedup_2_workers']}×")
            ov = sc["overhead_ms_per_trial"]
            t.add_row("storage overhead per trial", f"PostgreSQL {ov['postgresql']} ms", f"SQLite {ov['sqlite']} ms",
                      "(Optuna + MLflow)")
    console = Console(width=max(Console().width, 130))  # wide enough when piped (make bench | tee)
    console.print(t)
    for key, v in res["targets"].items():
        mark = {True: "met", False: "NOT met", None: "n/a"}[v["met"]]
        console.print(f"target {key} ≥ {v['target']}: {v['measured']} → {mark}")

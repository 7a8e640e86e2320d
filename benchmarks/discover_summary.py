"""One line per run of a discovery-regime sweep: warm-start settings, hack_prior before RL, the training hack
rate per step, held-out hack and solve at step 0 and at the end, and v_auc against v_auc_random (means over
the steps that logged them). Reads run directories only.

    python benchmarks/discover_summary.py SWEEP_DIR
"""

import json
import sys
from pathlib import Path


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return f"{sum(xs) / len(xs):.3f}" if xs else "n/a"


def _f(x):
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def main(root: str) -> int:
    runs = sorted(p.parent for p in Path(root).glob("*/config.json"))
    if not runs:
        print(f"no run directories under {root}", file=sys.stderr)
        return 2
    for d in runs:
        c = json.loads((d / "config.json").read_text())["config"]
        rows = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()] if (d / "metrics.jsonl").exists() else []
        s = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
        r0 = next((r for r in rows if r["step"] == 0), {})
        first, final = s.get("first_eval", {}), s.get("final_eval", {})
        hack = "abl" if c["intervention"] == "route" else "kept"
        print(f"{d.name}: {c['intervention']} s{c['seed']} frac {c['warmstart_hack_frac']} ws {c['warmstart_steps']} "
              f"ws_lr {c['warmstart_lr']} lr {c['lr']} | hack_prior {_f(r0.get('hack_prior'))} "
              f"(n {r0.get('prior_n')}, solve {_f(r0.get('solve_prior'))}) | hack_s "
              f"{' '.join(_f(r.get('hack_s')) for r in rows if r['step'] > 0)} | held-out hack_{hack} "
              f"{_f(first.get('hack_' + hack))} -> {_f(final.get('hack_' + hack))}, solve_{hack} "
              f"{_f(first.get('solve_' + hack))} -> {_f(final.get('solve_' + hack))} | v_auc "
              f"{_mean(r.get('v_auc') for r in rows)} vs random {_mean(r.get('v_auc_random') for r in rows)} "
              f"({sum('v_auc' in r for r in rows)} steps){'' if s else ' | INCOMPLETE'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))

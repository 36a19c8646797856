"""The worked example of docs/canary.md: one step of the shop's v2 judged by the default policy.

Synthetic but shaped like the lab's: the shop's traffic mix (examples/shop/traffic.py), 10 s of
a step at 25 % with ~1,000 requests/s, production's answer times as measured in the lab, and
v2's two regressions the judge can see from the mirror (CHANGES.md #4: 500s from
``GET /users/{id}/orders`` for users without orders; #5: +80 ms on ``GET /orders/{id}``).
Prints the step's verdict as the markdown table the docs show (seeded: the same every run)::

    .venv/bin/python bench/canary/example.py
"""

from __future__ import annotations

import random
import sys

from appliance.canary.judge import Evidence, Judge, default_judge_policy

MIX = {"GET /products": 0.34, "GET /products/{id}": 0.30, "GET /users/me": 0.14,
       "GET /users/{id}/orders": 0.10, "GET /orders/{id}": 0.06, "POST /orders": 0.04,
       "DELETE /orders/{id}": 0.02}
BASE_MS = {"GET /products": 1.9, "GET /products/{id}": 1.9, "GET /users/me": 1.9,
           "GET /users/{id}/orders": 2.4, "GET /orders/{id}": 2.0, "POST /orders": 3.5,
           "DELETE /orders/{id}": 2.1}


def evidence(seed: int = 17, seconds: float = 10, rate: float = 1000, weight: float = 0.25,
             v2: bool = True) -> Evidence:
    rng = random.Random(seed)
    ev = Evidence()
    eps, shares = list(MIX), list(MIX.values())
    for _ in range(int(seconds * rate)):
        side = "canary" if rng.random() < weight else "prod"
        ep = rng.choices(eps, shares)[0]
        ms = BASE_MS[ep] * rng.lognormvariate(0, 0.3)
        status = 200
        if side == "canary" and v2:
            if ep == "GET /orders/{id}":
                ms += 80 * rng.uniform(0.95, 1.05)
            if ep == "GET /users/{id}/orders" and rng.random() < 0.25:  # users 31-40
                status = 500
        ev.add(side, status, ms / 1000, ep)
    return ev


def table(v2: bool = True) -> str:
    v = Judge(default_judge_policy(), "canary", "prod").judge(evidence(v2=v2), divergence=None)
    out = ["| metric | endpoint | n canary / prod | canary | production | effect | allowed "
           "| p (U test) | p beyond allowance | result |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for m in v.metrics:
        for t in m.tests:
            share = t.unit == "share"

            def f(x: float | None, share: bool = share) -> str:
                if x is None:
                    return "-"
                return f"{x:.2%}" if share else f"{x:.1f} ms"

            eff = ("-" if t.effect is None else f"{t.effect:+.2%}" if share
                   else f"{t.effect:+.1f} ms")
            p = "-" if t.p_value is None else f"{t.p_value:.1e}"
            pb = "-" if t.p_beyond is None else f"{t.p_beyond:.1e}"
            out.append(f"| {m.name} | {t.endpoint or '(all)'} | {t.n_canary} / {t.n_baseline} "
                       f"| {f(t.canary)} | {f(t.baseline)} | {eff} | {f(t.allowed)} | {p} "
                       f"| {pb} | **{t.result}** |" if t.result == "fail" else
                       f"| {m.name} | {t.endpoint or '(all)'} | {t.n_canary} / {t.n_baseline} "
                       f"| {f(t.canary)} | {f(t.baseline)} | {eff} | {f(t.allowed)} | {p} "
                       f"| {pb} | {t.result} |")
        if not m.tests:
            out.append(f"| {m.name} | - | - | - | - | - | - | - | - | {m.result} "
                       f"({'; '.join(m.reasons)}) |")
    out.append("")
    out.append(f"score {v.score:.1f}, outcome **{v.outcome}**" if v.score is not None
               else f"outcome **{v.outcome}**")
    out += [f"- {r}" for r in v.reasons]
    return "\n".join(out)


if __name__ == "__main__":
    print(table(v2="--aa" not in sys.argv))

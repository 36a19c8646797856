"""The ``judge:`` and ``image:`` sections of a canary policy file (``canary run --config``).

Read by ``appliance.canary.rollout.load_policy`` through the project's strict YAML reader
(``strictconf``): an unknown key is an error naming its dotted path with a did-you-mean
(``canary.yaml: judge.metrics[1].allowed_increse: unknown key; did you mean
'allowed_increase'?``), a wrong type names the type expected, and the values are checked after
(``canary.yaml: judge.metrics[0].kind: 'latncy'; one of error_share, latency, ...``)::

    steps: [5, 25, 50, 100]
    step_seconds: 30
    min_requests: 50
    image: {name: shop, shadow: canary-1}   # roll the canary's image back too (optional)
    judge:
      alpha: 0.01                 # significance of each test (Bonferroni over endpoints)
      min_samples: 50             # per side, before a metric is judged at all
      endpoint_min_samples: 30    # per side, before one endpoint is judged
      thresholds: {pass: 95, marginal: 75}
      marginal: hold              # at the step's end: hold | promote | rollback
      inconclusive: {max_wait: 120, action: rollback}   # seconds a step may hold; then
      groups: {errors: 50, latency: 30, divergence: 20} # weights in the score
      metrics:
        - {name: errors, kind: error_share, group: errors, critical: true, per_endpoint: true,
           allowed_increase: {absolute: 0.01}}
        - {name: latency, kind: latency, group: latency, critical: true, per_endpoint: true,
           allowed_increase: {relative: 0.5, absolute: 10}}      # ms
        - {name: divergence, kind: divergence, group: divergence, critical: true}
        - name: cpu
          kind: prometheus
          url: http://127.0.0.1:9090
          canary: 'rate(process_cpu_seconds_total{job="canary"}[30s])[2m:5s]'
          baseline: 'rate(process_cpu_seconds_total{job="prod"}[30s])[2m:5s]'
          allowed_increase: {relative: 0.25}
"""

from __future__ import annotations

from typing import Any

import strictconf
from appliance.canary.judge import Allowance, JudgePolicy, MetricPolicy

ALLOWANCE: dict[str, Any] = {"relative": float, "absolute": float}
_METRIC_COMMON: dict[str, Any] = {
    "name": str, "kind": str, "group": str, "critical": bool, "direction": str,
    "allowed_increase": ALLOWANCE, "allowed_decrease": ALLOWANCE, "min_samples": int,
}
METRIC_SCHEMA = strictconf.Tagged("kind", {
    "error_share": {"per_endpoint": bool},
    "latency": {"per_endpoint": bool},
    "divergence": {},
    "prometheus": {"url": str, "canary": str, "baseline": str},
}, _METRIC_COMMON)
JUDGE_SCHEMA: dict[str, Any] = {
    "alpha": float, "min_samples": int, "endpoint_min_samples": int,
    "thresholds": {"pass": float, "marginal": float},
    "marginal": str,
    "inconclusive": {"max_wait": float, "action": str},
    "groups": strictconf.MapOf(float),
    "metrics": [METRIC_SCHEMA],
}
IMAGE_SCHEMA: dict[str, Any] = {"name": str, "shadow": str, "to": str}
"""``image: {name: IMAGE, shadow: SHADOW}``: the canary is shadow SHADOW of the image pipeline's
image IMAGE (``shadowtap shadow list``); a rollback also puts it back on the snapshot before
the one it runs (or on ``to:``)."""


def _allowance(d: dict[str, Any] | None) -> Allowance:
    d = d or {}
    return Allowance(relative=float(d.get("relative") or 0.0),
                     absolute=float(d.get("absolute") or 0.0))


def parse_judge(d: dict[str, Any], base: JudgePolicy) -> JudgePolicy:
    """A ``JudgePolicy`` from a checked ``judge:`` mapping; what it leaves out comes from
    ``base`` (the defaults derived from the flat keys). Raises ValueError naming the key."""
    metrics = base.metrics
    if d.get("metrics") is not None:
        metrics = []
        for i, m in enumerate(d["metrics"]):
            if not m.get("name") or not m.get("kind"):
                raise ValueError(f"judge.metrics[{i}]: needs a name and a kind")
            metrics.append(MetricPolicy(
                name=m["name"], kind=m["kind"], group=m.get("group") or m["name"],
                critical=bool(m.get("critical", False)),
                per_endpoint=bool(m.get("per_endpoint", False)),
                direction=m.get("direction") or "increase",
                allowed_increase=_allowance(m.get("allowed_increase")),
                allowed_decrease=_allowance(m.get("allowed_decrease")),
                min_samples=m.get("min_samples"), url=m.get("url"),
                canary_query=m.get("canary"), baseline_query=m.get("baseline")))
    th = d.get("thresholds") or {}
    inc = d.get("inconclusive") or {}
    jp = JudgePolicy(
        metrics=metrics,
        groups={**base.groups, **(d.get("groups") or {})} if d.get("metrics") is None
        else dict(d.get("groups") or {}),
        alpha=d["alpha"] if d.get("alpha") is not None else base.alpha,
        min_samples=d["min_samples"] if d.get("min_samples") is not None else base.min_samples,
        endpoint_min_samples=(d["endpoint_min_samples"]
                              if d.get("endpoint_min_samples") is not None
                              else base.endpoint_min_samples),
        pass_score=th["pass"] if th.get("pass") is not None else base.pass_score,
        marginal_score=th["marginal"] if th.get("marginal") is not None else base.marginal_score,
        marginal=d.get("marginal") or base.marginal,
        max_wait=inc.get("max_wait", base.max_wait),
        on_timeout=inc.get("action") or base.on_timeout)
    if jp.min_samples < 1 or jp.endpoint_min_samples < 1:
        raise ValueError("judge.min_samples and judge.endpoint_min_samples must be >= 1")
    if jp.max_wait is not None and jp.max_wait <= 0:
        raise ValueError("judge.inconclusive.max_wait must be > 0 seconds")
    jp.validate()
    return jp


SECTIONS: dict[str, Any] = {"judge": JUDGE_SCHEMA, "image": IMAGE_SCHEMA}
"""The keys this module adds to the policy file's schema."""


def take_sections(kw: dict[str, Any], path: Any) -> dict[str, Any]:
    """Turn the ``image:`` mapping of a checked policy document into an ``ImageTarget``; the
    ``judge:`` mapping stays as it is (``CanaryPolicy.judge_policy`` parses it with the flat
    keys, which the command line may still change, as its defaults)."""
    from appliance.canary.history import ImageTarget
    from appliance.canary.rollout import CanaryConfigError

    out = dict(kw)
    img = out.pop("image", None)
    if img is not None:
        if not img.get("name") or not img.get("shadow"):
            raise CanaryConfigError(f"{path}: image: needs name (the image) and shadow (the "
                                    "shadow running the canary), e.g. {name: shop, shadow: "
                                    "canary-1}")
        out["image"] = ImageTarget(img["name"], img["shadow"], img.get("to"))
    return out

"""The live engine: capture process -> hand-off -> worker processes -> merged verdict.

``handoff`` (capture side: exchanges as JSONL lines into one pipe per worker, sharded by
connection, overload shed on purpose), ``worker`` (sanitise, sinks, shadowing in processes of
their own), ``engine`` (the one composition that ``appliance run``, the demo and the canary
use). See docs/architecture.md for the map of the whole live path.
"""

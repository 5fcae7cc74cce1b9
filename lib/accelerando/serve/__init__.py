"""Serving many requests (WP4): what a request may be, what it becomes, where it runs.

- `policy`: request validation (`parse_request`, `BadRequest` with its HTTP status), the
  decomposition of a request into plan, lyrics and synthesis sections, and the `Router` that gives
  each request the best model variant meeting its tier's latency target, or rejects it with the
  reason (admission control). Pure policy: the server and the simulation both drive it.
"""

from .policy import (DEFAULT_TIERS, QUALITY_ORDER, BadRequest, Decision, MusicRequest, Plan, Router, ServiceTable,
                     SubTask, Tier, decompose, parse_request, plan_request)

__all__ = ["DEFAULT_TIERS", "QUALITY_ORDER", "BadRequest", "Decision", "MusicRequest", "Plan", "Router", "ServiceTable",
           "SubTask", "Tier", "decompose", "parse_request", "plan_request"]

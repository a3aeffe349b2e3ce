"""Scaling the AKS GPU node pool: up on demand, down on idle time and by schedule."""

from hubpilot.scale.capability import ScaleCapability, demand_key, record_demand
from hubpilot.scale.cost import CostReport, cost_report
from hubpilot.scale.forecast import Forecast, ForecastPolicy, forecast_policy_from, forecast_spare, learn
from hubpilot.scale.plan import Demand, Memory, Observed, Policy, guard_scale, plan_scale
from hubpilot.scale.schedule import Schedule, Warm

__all__ = [
    "CostReport",
    "Demand",
    "Forecast",
    "ForecastPolicy",
    "Memory",
    "Observed",
    "Policy",
    "ScaleCapability",
    "Schedule",
    "Warm",
    "cost_report",
    "demand_key",
    "forecast_policy_from",
    "forecast_spare",
    "guard_scale",
    "learn",
    "plan_scale",
    "record_demand",
]

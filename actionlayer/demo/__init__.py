"""The demo world: a seeded company, a day-by-day simulator with planted effects, and its SoR folder."""

from actionlayer.demo.world import (
    ActionFact,
    DayReport,
    DemoConfig,
    Effect,
    World,
    advance_day,
    approver_decisions,
    generate_world,
    load_demo_config,
    write_sor,
)

__all__ = [
    "ActionFact",
    "DayReport",
    "DemoConfig",
    "Effect",
    "World",
    "advance_day",
    "approver_decisions",
    "generate_world",
    "load_demo_config",
    "write_sor",
]

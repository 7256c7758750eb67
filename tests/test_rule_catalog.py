"""Every rule model is wired in: its YAML meta validates, it has unit tests, and the union reads it."""

from __future__ import annotations

import json

import pytest

from actionlayer.rules import load_rules
from actionlayer.transform import ensure_manifest

SHIPPED = {
    "post_quote_followup": 3,
    "overdue_invoice": 4,
    "nps_detractor": 4,
    "important_inquiry": 4,
    "contract_renewal": 3,
    "dormant_customer": 4,
    "invoice_due_reminder": 4,
    "ticket_reply_nudge": 5,
}


@pytest.fixture(scope="module")
def manifest():
    return json.loads(ensure_manifest().read_text())


def test_the_shipped_rules_load_with_their_declared_levels(manifest):
    rules = load_rules()
    assert {rule_id: rule.maturity_level for rule_id, rule in rules.items()} == SHIPPED
    assert rules["dormant_customer"].holdout_share == pytest.approx(0.3)
    # the demo's planted harmful rule holds out half, so the damage is measured with power
    assert rules["invoice_due_reminder"].holdout_share == pytest.approx(0.5)
    # the demo's level-5 rule learns channel x send window per account tier
    nudge = rules["ticket_reply_nudge"].learning
    assert nudge is not None and nudge.segment_by == "tier"
    assert [arm.id for arm in nudge.arms] == [
        "email@morning",
        "email@afternoon",
        "line@morning",
        "line@afternoon",
    ]
    for rule in rules.values():
        assert rule.template_subject and rule.template_body
        assert rule.outcome.get("kind") and rule.outcome.get("window_days")


def test_every_rule_model_is_in_the_union_and_has_unit_tests(manifest):
    nodes = manifest["nodes"]
    rule_models = {
        uid: node
        for uid, node in nodes.items()
        if node["resource_type"] == "model" and "rules" in node["fqn"] and node["name"].startswith("rule_")
    }
    assert len(rule_models) == len(SHIPPED)
    union = next(node for node in nodes.values() if node["name"] == "int_rule_candidates")
    missing = set(rule_models) - set(union["depends_on"]["nodes"])
    assert not missing, f"rule models not listed in int_rule_candidates.sql: {sorted(missing)}"
    unit_tests = manifest.get("unit_tests", {}).values()
    for uid, node in rule_models.items():
        tested = [t for t in unit_tests if uid in t["depends_on"]["nodes"]]
        assert tested, f"{node['name']} needs unit tests just inside and just outside its thresholds"

{#
  holdout_bucket(rule_id, contact_id): a number in [0, 1) fixed for one rule and one person, so the same person
  is always in (or out of) a rule's holdout group, on every pass and every machine. Held out when
  bucket < holdout_share.

    bucket = (md5_number_lower(rule_id || ':' || coalesce(contact_id, '')) % 10000) / 10000.0

  DuckDB's md5_number_lower(s) is the second half (bytes 8..15) of the MD5 digest read little-endian as an
  unsigned 64-bit integer. Python mirror (actionlayer/journey.py):

    digest = hashlib.md5(f"{rule_id}:{contact_id or ''}".encode()).digest()
    bucket = (int.from_bytes(digest[8:16], "little") % 10000) / 10000
#}
{% macro holdout_bucket(rule_id, contact_id) -%}
    ((md5_number_lower({{ rule_id }} || ':' || coalesce({{ contact_id }}, '')) % 10000) / 10000.0)
{%- endmacro %}

{# The deterministic action id: md5 of rule_id|record_type|record_id|signal_key (ledger.action_id_for). #}
{% macro action_id(rule_id, record_type, record_id, signal_key) -%}
    md5({{ rule_id }} || '|' || {{ record_type }} || '|' || {{ record_id }} || '|' || {{ signal_key }})
{%- endmacro %}

"""actionlayer.yml: sources are validated and every error names the key."""

from __future__ import annotations

import pytest

from actionlayer.settings import SettingsError, load_sources


def _write(tmp_path, text: str):
    path = tmp_path / "actionlayer.yml"
    path.write_text(text)
    return path


def test_no_file_or_no_sources_means_the_contract_folder(tmp_path):
    assert load_sources(tmp_path / "missing.yml") == []
    assert load_sources(_write(tmp_path, "channels: {}\n")) == []


def test_sources_are_read_with_their_objects(tmp_path):
    path = _write(
        tmp_path,
        """
sources:
  crm: {type: hubspot, token_env: HS_TOKEN, objects: [accounts, contacts, deals]}
  billing:
    type: postgres
    dsn_env: BILLING_DSN
    objects:
      invoices: {table: public.invoices, updated_column: updated_at}
""",
    )
    crm, billing = load_sources(path)
    assert (crm.name, crm.type, crm.objects) == ("crm", "hubspot", ("accounts", "contacts", "deals"))
    assert billing.objects == ("invoices",) and billing.config["dsn_env"] == "BILLING_DSN"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("sources: [a, b]\n", "sources must be a mapping"),
        ("sources:\n  crm: {type: salesforce, objects: [accounts]}\n", "sources.crm.type"),
        ("sources:\n  crm: {type: zoho}\n", "sources.crm.objects is missing"),
        (
            "sources:\n  crm: {type: zoho, objects: [accounts, leads]}\n",
            "sources.crm.objects names unknown objects ['leads']",
        ),
        (
            "sources:\n  a: {type: zoho, objects: [accounts]}\n  b: {type: hubspot, objects: [accounts]}\n",
            "sources.b.objects: accounts is already provided by source a",
        ),
        ("sources: {crm: [\n", "cannot read settings"),
    ],
)
def test_invalid_settings_name_the_key(tmp_path, text, named):
    with pytest.raises(SettingsError, match=None) as error:
        load_sources(_write(tmp_path, text))
    assert named in str(error.value)

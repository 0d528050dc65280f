"""`sbx token list|revoke` against a live broker."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from broker.cli.main import app
from tests.api.conftest import Live


def test_list_and_revoke_through_the_cli(live: Live) -> None:
    sbx = CliRunner(env={"SBX_URL": live.url})
    world = live.world
    minted = world.services.orgs.create_token(world.sme, org_id=world.sme.org_id, label="laptop")
    token_id = "tok_" + minted["token"].split("_")[2]
    listed = sbx.invoke(app, ["--token", world.tokens["sme-a"], "token", "list", "--json"])
    assert listed.exit_code == 0 and token_id in {t["id"] for t in json.loads(listed.stdout)}
    human = sbx.invoke(app, ["--token", world.tokens["sme-a"], "token", "list"])
    assert human.exit_code == 0 and f"{token_id}  {world.sme.org_id}  active   laptop" in human.stdout
    as_operator = sbx.invoke(
        app, ["--token", world.tokens["op2"], "token", "list", "--org", world.sme_b.org_id]
    )
    assert as_operator.exit_code == 0 and world.sme.org_id not in as_operator.stdout
    revoked = sbx.invoke(app, ["--token", world.tokens["sme-a"], "token", "revoke", token_id])
    assert revoked.exit_code == 0 and f"revoked {token_id}" in revoked.stdout
    refused = sbx.invoke(app, ["--token", minted["token"], "token", "list"])
    assert refused.exit_code != 0 and "unauthorized" in refused.stderr

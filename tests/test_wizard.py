"""The Manage RDS CALs wizard end to end (issue 15 items 4-7): a Clearinghouse daemon and license
servers on loopback, real SQLite, driven by tsls-admin (docs/wizard.md)."""
import pytest_twisted

from tests.harness import Lab
from tsls.core import phonecodes


def mistype(code: str, at: int) -> str:
    """``code`` with the character at ``at`` replaced by another of the alphabet."""
    other = next(ch for ch in phonecodes.ALPHABET if ch != code[at])
    return code[:at] + other + code[at + 1:]


@pytest_twisted.inlineCallbacks
def test_install_by_the_key_pack_id_read_out_on_the_telephone(tmp_path, capsys):
    lab = Lab(tmp_path)
    yield lab.start()
    try:
        yield lab.admin(capsys, "activate")
        status = yield lab.admin(capsys, "status")
        ls_id = status["activation"]["license_server_id"]
        sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2019", "--cal-type", "per-device",
                               "--quantity", "10")
        issued = yield lab.admin(capsys, "clearinghouse", "issue", "--license-server-id", phonecodes.grouped(ls_id),
                                 "--retail", sold["retail_code"], "--quantity", "4")
        kp = issued["key_pack"]["key_pack_id"]
        assert issued["key_pack"]["quantity"] == 4 and len(kp) == 35

        # a mistyped character anywhere: refused where it is typed, nothing installed, the Clearinghouse not asked
        for at in (0, 17, 34):
            refused = yield lab.admin(capsys, "install", "--key-pack-id", phonecodes.grouped(mistype(kp, at)))
            assert refused["error"]["code"] == "MISTYPED_CODE"
        # well formed but for another server: refused as such
        other = phonecodes.make(phonecodes.Kind.KEY_PACK, "X" * 35)
        refused = yield lab.admin(capsys, "install", "--key-pack-id", other)
        assert refused["error"]["code"] == "CODE_FOR_ANOTHER_SERVER"
        # well formed, for this server, never issued: the Clearinghouse does not know it
        never = phonecodes.make(phonecodes.Kind.KEY_PACK, ls_id)
        refused = yield lab.admin(capsys, "install", "--key-pack-id", never)
        assert refused["error"]["code"] == "UNKNOWN_KEY_PACK"
        packs = yield lab.admin(capsys, "keypacks")
        assert packs == []

        pack = yield lab.admin(capsys, "install", "--key-pack-id", phonecodes.grouped(kp).lower())
        assert (pack["key_pack_id"], pack["total"], pack["cal_type"], pack["product_version"]) == \
            (kp, 4, "per_device", "2019")
        again = yield lab.admin(capsys, "install", "--key-pack-id", kp)          # typed twice: installed once
        assert again["key_pack_id"] == kp
        packs = yield lab.admin(capsys, "keypacks")
        assert [(p["key_pack_id"], p["total"]) for p in packs] == [(kp, 4)]
        purchases = yield lab.admin(capsys, "clearinghouse", "purchases")
        [p] = [p for p in purchases if p["retail_code"] == sold["retail_code"]]
        assert (p["installed"], p["remaining"], p["bound_to"]) == (4, 6, ls_id)
    finally:
        yield lab.stop()

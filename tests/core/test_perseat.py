import pytest

from tsls.core.perseat import (
    ADMINISTRATOR, AddPackUse, LicensedBy, Product, ProductMode, Requester, add_pack_id, apply_add_pack, connect, parse_add_pack, switch_to_per_seat,
    switch_to_per_server,
)
from tsls.errors import Code, TslsError

SQL = Product("SQL Server 7.0", "SQLSRV01", per_server_licenses=3)


def refused(code, f, *args):
    with pytest.raises(TslsError) as e:
        f(*args)
    assert e.value.code is code
    return e.value


def test_per_server_counts_concurrent_connections_and_lets_an_administrator_in():
    assert connect(SQL, 2, False, None, {}, 0) is LicensedBy.PER_SERVER
    refused(Code.NO_PER_SERVER_LICENSE, connect, SQL, 3, False, None, {}, 0)
    assert connect(SQL, 3, True, None, {}, 0) is LicensedBy.ADMINISTRATOR


def test_a_suite_cal_is_refused_against_a_per_server_product():
    error = refused(Code.NOT_PER_SEAT, connect, SQL, 0, False, LicensedBy.SUITE, {}, 5)
    assert "Per Seat" in error.message


def test_the_switch_to_per_seat_is_confirmed_permitted_and_one_way():
    refused(Code.NOT_PERMITTED, switch_to_per_seat, SQL, True, Requester(), 0)
    warning = refused(Code.CONFIRMATION_REQUIRED, switch_to_per_seat, SQL, False, ADMINISTRATOR, 0)
    assert "Per Server license loss" in warning.message
    seat = switch_to_per_seat(SQL, True, ADMINISTRATOR, 100)
    assert (seat.mode, seat.per_server_licenses, seat.switched_at) == (ProductMode.PER_SEAT, 0, 100)
    refused(Code.ALREADY_PER_SEAT, switch_to_per_seat, seat, True, ADMINISTRATOR, 0)
    refused(Code.PER_SEAT_IS_FINAL, switch_to_per_server, seat)


def test_per_seat_uses_the_products_cals_then_the_suite_and_keeps_a_devices_cal():
    seat = switch_to_per_seat(Product("SNA Server", "HOST", seat_licenses=1), True, ADMINISTRATOR, 0)
    taken = {LicensedBy.SEAT: 1, LicensedBy.SUITE: 1}
    assert connect(seat, 0, False, None, {}, 1) is LicensedBy.SEAT
    assert connect(seat, 0, False, None, {LicensedBy.SEAT: 1}, 1) is LicensedBy.SUITE
    refused(Code.NO_LICENSE_AVAILABLE, connect, seat, 0, False, None, taken, 1)
    assert connect(seat, 0, False, LicensedBy.SUITE, taken, 1) is LicensedBy.SUITE


def test_only_an_administrator_or_the_server_itself_once_proved_may_switch():
    refused(Code.NOT_PERMITTED, switch_to_per_seat, SQL, True, Requester(proven_server="OTHERSRV"), 0)
    refused(Code.NOT_PERMITTED, switch_to_per_seat, SQL, True, Requester(proven_server=None), 0)
    assert switch_to_per_seat(SQL, True, Requester(proven_server="SQLSRV01"), 0).mode is ProductMode.PER_SEAT


def test_an_add_pack_raises_the_licenses_once_and_then_only_restores():
    pack = add_pack_id(5, "0000BEEF")
    assert parse_add_pack(pack) == 5
    after, used = apply_add_pack(5, pack, None)
    assert (after, used) == (10, AddPackUse(5, 10))
    error = refused(Code.ADD_PACK_USED, apply_add_pack, 10, pack, used)
    assert error.message == ("This Microsoft Small Business Server Client Add Pack disk was already used to increase "
                             "client licenses from 5 to 10. This disk can only be reused to restore licenses from 5 "
                             "to 10 users.")
    assert apply_add_pack(5, pack, used) == (10, used)        # after a reinstall


def test_an_add_pack_past_25_or_on_another_edition_is_refused():
    refused(Code.LICENSE_LIMIT_EXCEEDED, apply_add_pack, 20, add_pack_id(10, "00000001"), None)
    refused(Code.NOT_SBS, apply_add_pack, None, add_pack_id(5, "00000001"), None)


@pytest.mark.parametrize("pack", ["", "SBSAP-5-0000BEEF-0000", "SBSAP-50-0000BEEF-ABCD", 5, None,
                                  add_pack_id(5, "0000BEEF").lower()])
def test_malformed_add_pack_identities_are_refused(pack):
    refused(Code.BAD_ADD_PACK, parse_add_pack, pack)

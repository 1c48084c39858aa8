"""The daemon's text log: routine grant events are summed up, the rest logged one by one."""
from twisted.logger import Logger

from tsls.core.events import Event, EventId
from tsls.server.records import Records


class Writer:
    on_events = None


def test_routine_grants_are_summed_up_in_one_line_and_other_events_logged_each():
    records = Records(Writer(), identity=None)
    logged = []
    records.log = Logger(observer=logged.append)
    followed = []
    records.followers.add(followed.append)
    committed = [(i, Event(1000, EventId.TEMPORARY_ISSUED, "issued", "TS01", f"hw{i}")) for i in range(3)]
    committed += [(3, Event(1000, EventId.CAL_ISSUED, "CAL", "TS01", "hw0")),
                  (4, Event(1000, EventId.LOGON_REFUSED, "NO_LICENSE_AVAILABLE: none left", "TS01", "hw9"))]
    records.publish(committed)
    assert [e["event_id"] for e in logged] == [1106]            # a refusal still gets its own line
    assert [e["id"] for e in followed] == [0, 1, 2, 3, 4]       # followers get every event
    records.summarise()
    assert logged[-1]["routine"] == {1101: 3, 1102: 1}
    assert "3 TEMPORARY_ISSUED (1101), 1 CAL_ISSUED (1102)" in logged[-1]["counts"]
    records.summarise()                                         # nothing since: no line
    assert len(logged) == 2
    records.log_every_event = True                              # tsls server --log-every-event
    records.publish(committed[:1])
    assert logged[-1]["event_id"] == 1101

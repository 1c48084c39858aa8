"""The console in a real browser: Debian's chromium, headless, driven by selenium through
chromedriver. The daemon is real (loopback, real SQLite); the protocol's answers are the reference.

Selenium blocks, so each browser step runs in a thread (deferToThread) while the reactor serves
the console. Waits are selenium's WebDriverWait: for a condition, with a timeout.

TSLS_CONSOLE_SCREENSHOTS=DIR saves the screenshots docs/console.md shows into DIR
(docs/images to refresh them).
"""
import os
import shutil

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from tests.console.harness import ConsoleDaemon
from tests.harness import activate_and_install, logon, running
from tsls.errors import TslsError

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
SHOTS = os.environ.get("TSLS_CONSOLE_SCREENSHOTS")
WAIT = 15

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run does)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,860",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture
def served(tmp_path, browser):
    from tsls.labclock import LabClock

    browser.delete_all_cookies()
    yield from running(ConsoleDaemon(tmp_path, lab_clock=LabClock(reactor)))


def in_browser(f, *args):
    return threads.deferToThread(f, *args)


def wait(driver, condition):
    """Until ``condition(driver)`` is true. The pages redraw themselves every few seconds, so an
    element found a moment ago may be gone: that try is retried."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def js(driver, script, *args):
    """Run ``script`` in the page: one step of its event loop, so no redraw happens halfway through."""
    return driver.execute_script(script, *args)


def text(driver, selector):
    """The shown text of the first element ``selector`` matches, or None."""
    return js(driver, "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", selector)


def texts(driver, selector):
    return js(driver, "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText);", selector)


def exists(driver, selector):
    return js(driver, "return document.querySelector(arguments[0]) !== null;", selector)


def click(driver, selector):
    js(driver, "document.querySelector(arguments[0]).click();", selector)


def shot(driver, name):
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        driver.save_screenshot(os.path.join(SHOTS, f"console-{name}.png"))


def open_page(driver, url, ready):
    """Go to ``url`` and wait until ``ready`` (a CSS selector) shows."""
    driver.get(url)
    wait(driver, lambda d: exists(d, ready))


@pytest_twisted.inlineCallbacks
def test_log_in_with_the_link_and_the_dashboard_shows_what_the_protocol_says(served, browser):
    admin = yield served.admin()
    yield activate_and_install(admin, quantity=8)
    ts = yield served.terminal_server()
    for i in range(10):
        yield logon(ts, f"pc{i}")
        yield logon(ts, f"pc{i}")
    status = yield admin.request("status")
    link = yield served.link()

    def look():
        open_page(browser, link, "#license-counts tr[data-count]")
        wait(browser, lambda d: exists(d, "#cals [data-bar]"))
        shown = js(browser, """
            const bar = document.querySelector("#cals [data-bar]");
            const figure = (f) => Number(bar.querySelector(`[data-field=${f}]`).innerText);
            return {
              counts: Object.fromEntries([...document.querySelectorAll("#license-counts tr[data-count]")]
                .map((row) => [row.dataset.count, Number(row.cells[1].innerText)])),
              figures: {total: figure("total"), issued: figure("issued"), available: figure("available")},
              activation: document.querySelector("#activation").innerText,
              role: document.querySelector("#role").innerText,
              alerts: [...document.querySelectorAll("#alerts li")].map((li) => li.innerText),
            };""")
        shot(browser, "dashboard")
        return shown["counts"], shown["figures"], shown["activation"], shown["role"], shown["alerts"]

    counts, figures, activation, role, alerts = yield in_browser(look)
    assert counts == status["licenses"]
    pack = status["key_packs"][0]
    assert figures == {"total": pack["total"], "issued": pack["issued"], "available": pack["available"]} \
        == {"total": 8, "issued": 8, "available": 0}
    assert activation == "activated" and role == "admin"
    assert any("none left" in a for a in alerts)


@pytest_twisted.inlineCallbacks
def test_the_open_dashboard_follows_logons_without_a_reload(served, browser):
    admin = yield served.admin()
    yield activate_and_install(admin, quantity=5)
    link = yield served.link("viewer")
    issued = 'document.querySelector("#cals [data-bar] [data-field=issued]")'

    def opened():
        open_page(browser, link, "#cals [data-bar]")
        js(browser, "window.notReloaded = true;")
        return js(browser, f"return Number({issued}.innerText);")

    assert (yield in_browser(opened)) == 0
    ts = yield served.terminal_server()
    for device in ("pc1", "pc2", "pc3"):
        yield logon(ts, device)
        yield logon(ts, device)              # the second logon, reported, upgrades it to a CAL

    def followed():
        wait(browser, lambda d: js(d, f"return Number({issued}.innerText);") == 3)
        return js(browser, "return window.notReloaded === true;"), text(browser, "#license-counts")

    same_page, counts = yield in_browser(followed)
    assert same_page and "permanent active\t3" in counts


@pytest_twisted.inlineCallbacks
def test_revoke_from_the_licenses_page_and_the_protocol_agrees(served, browser):
    admin = yield served.admin()
    yield activate_and_install(admin, quantity=10)      # 20%: two may be revoked at once
    ts = yield served.terminal_server()
    for i in range(4):
        yield logon(ts, f"pc{i}")
        yield logon(ts, f"pc{i}")
    target = (yield admin.request("list_licenses", hwid="hw-pc2", kind="permanent"))[0]
    listed = yield admin.request("list_licenses")
    link = yield served.link()

    def revoke():
        from selenium.webdriver.support.ui import Select
        open_page(browser, link, "#activation")
        browser.get(served.url + "/#licenses")
        wait(browser, lambda d: text(d, "#total"))
        total = int(text(browser, "#total"))
        Select(browser.find_element("css selector", "select[name=kind]")).select_by_value("permanent")
        row = f'tr[data-license="{target["license_id"]}"]'
        wait(browser, lambda d: exists(d, row + " button.revoke") and text(d, "#total") == "4")
        click(browser, row + " button.revoke")
        wait(browser, lambda d: exists(d, "#confirm[open]") and text(d, "#confirm-text"))
        question = text(browser, "#confirm-text")
        shot(browser, "revoke")
        click(browser, "#confirm-ok")
        wait(browser, lambda d: exists(d, "#notice:not([hidden])") and text(d, "#notice"))
        notice = text(browser, "#notice")
        wait(browser, lambda d: not exists(d, row + " button.revoke"))
        return total, question, notice

    total, question, notice = yield in_browser(revoke)
    assert total == len(listed)
    assert "1 more Windows Server 2003 Per Device CALs may be revoked now" in question
    assert f"CAL {target['license_id']} revoked" in notice
    after = yield admin.request("list_licenses", hwid="hw-pc2", kind="permanent")
    assert after[0]["status"] == "revoked"
    packs = yield admin.request("list_key_packs")
    assert packs[0]["issued"] == 3


@pytest_twisted.inlineCallbacks
def test_a_refused_revocation_is_shown_with_its_code_and_a_sentence(served, browser):
    admin = yield served.admin()
    yield activate_and_install(admin, quantity=5)       # 20% of 5: one revoked at a time
    ts = yield served.terminal_server()
    for device in ("pc1", "pc2"):
        yield logon(ts, device)
        yield logon(ts, device)
    first = (yield admin.request("list_licenses", hwid="hw-pc1", kind="permanent"))[0]
    second = (yield admin.request("list_licenses", hwid="hw-pc2", kind="permanent"))[0]
    yield admin.request("revoke", license_id=first["license_id"])
    link = yield served.link()

    def refused():
        open_page(browser, link, "#activation")
        browser.get(served.url + "/#licenses")
        row = f'tr[data-license="{second["license_id"]}"]'
        wait(browser, lambda d: exists(d, row + " button.revoke"))
        click(browser, row + " button.revoke")
        wait(browser, lambda d: exists(d, "#confirm[open]") and text(d, "#confirm-text"))
        question = text(browser, "#confirm-text")
        click(browser, "#confirm-ok")
        wait(browser, lambda d: exists(d, "#notice.error:not([hidden])"))
        return question, text(browser, "#notice")

    question, notice = yield in_browser(refused)
    assert "No more Windows Server 2003 Per Device CALs may be revoked until" in question
    assert notice.startswith("The revocation limit is reached for this version.") and "(REVOCATION_LIMIT)" in notice
    after = yield admin.request("list_licenses", hwid="hw-pc2", kind="permanent")
    assert after[0]["status"] == "active"


@pytest_twisted.inlineCallbacks
def test_an_event_arrives_on_the_events_page_as_it_is_committed(served, browser):
    ts = yield served.terminal_server("TSLIVE")
    link = yield served.link("viewer")

    def watch():
        open_page(browser, link, "#activation")
        browser.get(served.url + "/#events")
        wait(browser, lambda d: text(d, "#live") == "live")

    yield in_browser(watch)
    answer = yield logon(ts, "arriving")

    def arrived():
        wait(browser, lambda d: any("hw-arriving" in r for r in texts(d, "#events tr[data-event]")))
        shot(browser, "events")
        return [r for r in texts(browser, "#events tr[data-event]") if "hw-arriving" in r]

    rows = yield in_browser(arrived)
    assert any("TEMPORARY_ISSUED" in r and "TSLIVE" in r for r in rows)
    events = yield (yield served.admin()).request("list_events", hwid="hw-arriving")
    assert str(answer["license"]["license_id"]) in " ".join(rows) and events


@pytest_twisted.inlineCallbacks
def test_refused_without_the_credential(served, browser):
    link = yield served.link()

    def refused():
        browser.get(served.url + "/")
        first = text(browser, "h1")
        browser.get(served.url + "/#licenses")
        still = text(browser, "h1")
        no_page_data = not exists(browser, "#licenses")
        browser.get(link)                      # a good link logs in ...
        wait(browser, lambda d: exists(d, "#activation"))
        browser.delete_all_cookies()           # ... and without the cookie nothing shows
        browser.get(link)                      # a used link does not log in again
        reused = text(browser, "h1")
        return first, still, no_page_data, reused

    first, still, no_page_data, reused = yield in_browser(refused)
    assert first == still == "Log in to the tsls console" and no_page_data
    assert reused == "This link cannot log you in"


@pytest_twisted.inlineCallbacks
def test_reports_session_hosts_and_history_pages_draw(served, browser):
    admin = yield served.admin()
    yield activate_and_install(admin, quantity=6)
    registered = yield admin.request("register_terminal_server", name="TS01")
    yield admin.request("group_add", name="TS01")
    ts = yield served.terminal_server(secret=registered["secret"])
    outsider = yield served.terminal_server("TS99")
    for day in range(5):                    # five days of lab time, so the history has a shape
        for i in range(day * 2, day * 2 + 2):
            yield logon(ts, f"pc{i}")
            yield logon(ts, f"pc{i}")
        if day == 2:
            yield admin.request("install_key_pack", purchase={"program": "retail", "retail_code": "S" * 25,
                                                              "cal_type": "per_device", "quantity": 4})
        if day >= 3:
            yield admin.request("set_policy", security_group=True)
            for attempt in range(day):
                with pytest.raises(TslsError):  # refused: not in the group
                    yield logon(outsider, f"px{day}-{attempt}")
        yield admin.request("set_clock", to="+1d")
    link = yield served.link("viewer")

    def pages():
        open_page(browser, link, "#activation")
        browser.get(served.url + "/#hosts")
        wait(browser, lambda d: exists(d, 'tr[data-host="TS01"]'))
        hosts, policy = js(browser, """return [Object.fromEntries([...document.querySelectorAll("tr[data-host]")]
            .map((r) => [r.dataset.host, r.innerText])), document.querySelector("#policy").checked];""")
        shot(browser, "hosts")
        browser.get(served.url + "/#history")
        wait(browser, lambda d: js(d, 'return document.querySelectorAll("#history svg polyline").length;') >= 3)
        shot(browser, "history")
        browser.get(served.url + "/#reports")
        wait(browser, lambda d: exists(d, "#issued-cals table tr td"))
        shot(browser, "reports")
        return hosts, policy, js(browser, 'return document.querySelectorAll("#issued-cals table tr").length;') - 1

    hosts, policy, cals = yield in_browser(pages)
    assert policy is True
    assert "TS01" in hosts and "yes" in hosts["TS01"] and "TS99" in hosts
    issued = yield admin.request("list_licenses", kind="permanent")
    assert cals == len(issued) == 10


@pytest_twisted.inlineCallbacks
def test_charts_place_days_by_time_draw_counts_as_steps_and_keep_labels_apart(served, browser):
    # A lab year: CALs installed on day 0, more half a year later, then a few days close together. The
    # history sends only the days something changed; the chart must not draw them evenly spaced.
    link = yield served.link("viewer")
    days = ["2025-01-06", "2025-07-14", "2025-09-08", "2025-09-09", "2025-09-22", "2026-01-05"]

    def draw():
        open_page(browser, link, "#activation")
        return js(browser, """
            const chart = lineChart(arguments[0], [{ name: "held", color: "#000", step: true,
                                                     values: [10, 16, 15, 14, 12, 10] }], "t");
            return { cx: [...chart.querySelectorAll("circle")].map((c) => +c.getAttribute("cx")),
                     points: chart.querySelector("polyline").getAttribute("points").trim().split(/\\s+/).length,
                     labels: [...chart.querySelectorAll("text[data-label]")].map((t) => [t.dataset.label, +t.getAttribute("x")]) };
        """, days)

    drawn = yield in_browser(draw)
    cx = drawn["cx"]
    assert (cx[1] - cx[0]) / (cx[-1] - cx[0]) == pytest.approx(189 / 364, abs=0.01)      # by time, not by index
    assert drawn["points"] == 2 * len(days) - 1                                         # a step at each change
    xs = [x for _, x in drawn["labels"]]
    assert drawn["labels"][0][0] == "2025-01-06" and drawn["labels"][-1][0] == "2026-01-05"
    assert all(b - a >= 80 for a, b in zip(xs, xs[1:]))                                 # no label over another

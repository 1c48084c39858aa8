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
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, WAIT).until(condition)


def css(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def shot(driver, name):
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        driver.save_screenshot(os.path.join(SHOTS, f"console-{name}.png"))


def open_page(driver, url, page, ready):
    """Go to a page of the console and wait until ``ready`` (a CSS selector) shows."""
    driver.get(url)
    wait(driver, lambda d: css(d, ready))


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
        open_page(browser, link, "dashboard", "#license-counts tr[data-count]")
        wait(browser, lambda d: css(d, "#cals [data-bar]"))
        counts = {row.get_attribute("data-count"): int(row.find_elements("css selector", "td")[1].text)
                  for row in css(browser, "#license-counts tr[data-count]")}
        bar = css(browser, "#cals [data-bar]")[0]
        figures = {f: int(bar.find_element("css selector", f"[data-field={f}]").text)
                   for f in ("total", "issued", "available")}
        shot(browser, "dashboard")
        return (counts, figures, css(browser, "#activation")[0].text, css(browser, "#role")[0].text,
                [li.text for li in css(browser, "#alerts li")])

    counts, figures, activation, role, alerts = yield in_browser(look)
    assert counts == status["licenses"]
    pack = status["key_packs"][0]
    assert figures == {"total": pack["total"], "issued": pack["issued"], "available": pack["available"]} \
        == {"total": 8, "issued": 8, "available": 0}
    assert activation == "activated" and role == "admin"
    assert any("none left" in a for a in alerts)


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
        open_page(browser, link, "dashboard", "#activation")
        browser.get(served.url + "/#licenses")
        wait(browser, lambda d: css(d, "#total"))
        total = int(css(browser, "#total")[0].text)
        Select(css(browser, "select[name=kind]")[0]).select_by_value("permanent")
        row = f'tr[data-license="{target["license_id"]}"]'
        wait(browser, lambda d: css(d, row + " button.revoke") and int(css(d, "#total")[0].text) == 4)
        css(browser, row + " button.revoke")[0].click()
        wait(browser, lambda d: css(d, "#confirm[open]") and css(d, "#confirm-text")[0].text)
        question = css(browser, "#confirm-text")[0].text
        shot(browser, "revoke")
        css(browser, "#confirm-ok")[0].click()
        wait(browser, lambda d: not css(d, "#notice")[0].get_attribute("hidden") and css(d, "#notice")[0].text)
        notice = css(browser, "#notice")[0].text
        wait(browser, lambda d: not css(d, row + " button.revoke"))
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
        open_page(browser, link, "dashboard", "#activation")
        browser.get(served.url + "/#licenses")
        row = f'tr[data-license="{second["license_id"]}"]'
        wait(browser, lambda d: css(d, row + " button.revoke"))
        css(browser, row + " button.revoke")[0].click()
        wait(browser, lambda d: css(d, "#confirm[open]") and css(d, "#confirm-text")[0].text)
        question = css(browser, "#confirm-text")[0].text
        css(browser, "#confirm-ok")[0].click()
        wait(browser, lambda d: "error" in (css(d, "#notice")[0].get_attribute("class") or ""))
        return question, css(browser, "#notice")[0].text

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
        open_page(browser, link, "dashboard", "#activation")
        browser.get(served.url + "/#events")
        wait(browser, lambda d: css(d, "#live") and css(d, "#live")[0].text == "live")

    yield in_browser(watch)
    answer = yield logon(ts, "arriving")

    def arrived():
        rows = f'#events tr[data-event]'
        wait(browser, lambda d: any("hw-arriving" in r.text for r in css(d, rows)))
        shot(browser, "events")
        return [r.text for r in css(browser, rows) if "hw-arriving" in r.text]

    rows = yield in_browser(arrived)
    assert any("TEMPORARY_ISSUED" in r and "TSLIVE" in r for r in rows)
    events = yield (yield served.admin()).request("list_events", hwid="hw-arriving")
    assert str(answer["license"]["license_id"]) in " ".join(rows) and events


@pytest_twisted.inlineCallbacks
def test_refused_without_the_credential(served, browser):
    link = yield served.link()

    def refused():
        browser.get(served.url + "/")
        first = browser.find_element("tag name", "h1").text
        browser.get(served.url + "/#licenses")
        still = browser.find_element("tag name", "h1").text
        no_page_data = not css(browser, "#licenses")
        browser.get(link)                      # a good link logs in ...
        wait(browser, lambda d: css(d, "#activation"))
        browser.delete_all_cookies()           # ... and without the cookie nothing shows
        browser.get(link)                      # a used link does not log in again
        reused = browser.find_element("tag name", "h1").text
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
        open_page(browser, link, "dashboard", "#activation")
        browser.get(served.url + "/#hosts")
        wait(browser, lambda d: css(d, 'tr[data-host="TS01"]'))
        hosts = {r.get_attribute("data-host"): r.text for r in css(browser, "tr[data-host]")}
        policy = css(browser, "#policy")[0].is_selected()
        shot(browser, "hosts")
        browser.get(served.url + "/#history")
        wait(browser, lambda d: len(css(d, "#history svg polyline")) >= 3)
        shot(browser, "history")
        browser.get(served.url + "/#reports")
        wait(browser, lambda d: css(d, "#issued-cals table tr td"))
        shot(browser, "reports")
        return hosts, policy, len(css(browser, "#issued-cals table tr")) - 1

    hosts, policy, cals = yield in_browser(pages)
    assert policy is True
    assert "TS01" in hosts and "yes" in hosts["TS01"] and "TS99" in hosts
    issued = yield admin.request("list_licenses", kind="permanent")
    assert cals == len(issued) == 10

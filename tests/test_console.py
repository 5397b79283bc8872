"""The web console (issue 10, point 3) in a real headless Chromium, against a real API process
(waitress), Mosquitto, the InfluxDB servers, ingest, the alert engine and the notifier:

- every page loads, for an admin and for a user (who sees only their own), with nothing on
  the browser's console (no script error, no Content-Security-Policy violation, no failed
  load);
- a reading published over MQTT goes through ingest into storage and onto the open device
  chart, through the API's live stream, without a reload;
- a rule created in the page fires: its alert shows on the alerts page, is silenced from
  there, and once resolved shows as resolved; its notification shows on its page.

With ``VIGIL_CONSOLE_SCREENSHOTS=<folder>`` the tests also save each page as
``console-<page>.png`` there (``scripts/console-screenshots`` makes docs/img's).

Waits are on DOM conditions (WebDriverWait); nothing sleeps to assert.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from support import connected, wait_ready, wait_until

from api.console.assets import FILES
from api.console.live import Cursor, Slots, Stream, events
from api.console.pages import CONTENT_SECURITY_POLICY
from storage_nodes import Point
from vigil.messages import DeviceStatus, Reading, encode_readings, now_ms

SCREENSHOTS = os.environ.get("VIGIL_CONSOLE_SCREENSHOTS")
PAGES = ("devices", "alerts", "rules", "notifications", "storage")
WAIT_S = 30


# -- without a browser ------------------------------------------------------------------
def test_the_cursor_sends_each_point_once():
    cursor = Cursor(1000)
    first = [Point(1000, 1.0, 1), Point(1000, 2.0, 2), Point(1500, 3.0, 3)]
    assert cursor.advance(first) == first
    assert (cursor.since_ms, cursor.ids_at_since) == (1500, {3})
    # the next poll starts at 1500 again: a second reading of that millisecond is new
    again = [Point(1500, 3.0, 3), Point(1500, 4.0, 4), Point(2000, 5.0, 5)]
    assert cursor.advance(again) == again[1:]
    assert cursor.advance([Point(2000, 5.0, 5)]) == []


def test_a_stream_ends_and_frees_its_slot():
    slots = Slots(1)
    polls: list[int] = []

    def fetch(since: int) -> list[Point]:
        polls.append(since)
        return [Point(since, 1.0, 7)] if len(polls) == 1 else []

    stream = Stream("dev-1", "t", fetch, lifetime_s=0.0, poll_s=0.01, slots=slots)
    body = b"".join(events(stream, Cursor(5)))
    assert b'event: points\ndata: {"device":"dev-1","metric":"t","points":[{"ts":5' in body
    assert body.endswith(b'event: end\ndata: {"since":5}\n\n')
    assert slots.free == 1
    # a stream never read (a HEAD answer) takes no slot; one that finds none says so
    events(stream, Cursor(5))
    assert slots.take() and slots.free == 0
    assert b"event: busy" in b"".join(events(stream, Cursor(5)))
    slots.give()


def test_the_console_files_are_public_with_a_strict_policy(anon_client, cloud_config):
    page = anon_client.get("/console/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert anon_client.get("/console").get_data() == page.get_data()
    for path, file in FILES.items():
        resp = anon_client.get(path)
        assert resp.status_code == 200 and resp.get_data() == file.read_bytes(), path
        assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        if path.endswith(".js"):
            assert resp.mimetype == "text/javascript"
        if file.suffix in (".html", ".js", ".css") and "vendor" not in path:
            text = file.read_text()
            assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path  # no CDN
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path  # no inline script
            assert "style=" not in text and "<style" not in text, path
            assert "innerHTML" not in text, path
    assert {"/console/vendor/uPlot.iife.min.js", "/console/vendor/LICENSE"} <= set(FILES)
    # the files are public, the data is not: the stream needs a token too
    assert anon_client.get("/devices").status_code == 401
    stream = anon_client.get("/devices/dev-1/metrics/temperature/stream")
    assert stream.status_code == 401 and stream.mimetype == "application/problem+json"
    assert anon_client.get("/console/nope.js").status_code == 401  # only files are public
    assert anon_client.get("/console/?x=1").status_code == 400


def test_the_stream_checks_its_device_and_parameters(client):
    assert client.get("/devices/nope/metrics/temperature/stream").status_code == 404
    assert client.get("/devices/dev-1/metrics/temperature/stream?limit=3").status_code == 400
    assert client.get("/devices/dev-1/metrics/temperature/stream?since=x").status_code == 400
    assert client.get("/devices/dev-1/metrics/t%0A/stream").status_code == 400
    client.application.config["LIVE_STREAM_S"] = 0.0
    resp = client.get("/devices/dev-1/metrics/temperature/stream?since=0")
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.get_data().endswith(b'event: end\ndata: {"since":0}\n\n')


# -- the browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module, with a fresh profile; each test's API is on its
    own port, so each test starts with an empty sessionStorage."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("chromium and chromedriver are not installed: scripts/bootstrap dev does it")
    profile = tempfile.mkdtemp(prefix="vigil-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    yield chrome
    chrome.quit()
    shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Console:
    driver: webdriver.Chrome
    base: str
    admin_token: str
    broker: Any
    engine_log: Path

    # -- the page -------------------------------------------------------------------------
    def wait(self, cond: Callable[[webdriver.Chrome], Any], what: str, timeout: float = WAIT_S):
        def retried(d: webdriver.Chrome) -> Any:
            try:
                return cond(d)
            except StaleElementReferenceException:  # the page re-rendered the table
                return False

        return WebDriverWait(self.driver, timeout, 0.1).until(retried, f"waiting for {what}")

    def css(self, selector: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, selector: str) -> str:
        found = self.all(selector)
        return found[0].text if found else ""

    def login(self, token: str) -> None:
        self.driver.get(f"{self.base}/console/")
        self.wait(lambda d: self.css("#login").is_displayed(), "the login form")
        self.css("#token").send_keys(token)
        self.css("#login button[type=submit]").click()

    def go(self, page: str, *params: str) -> None:
        """Open a page from the menu (the app routes on the hash: no reload) and wait until
        it loaded its data."""
        if params:
            self.driver.execute_script(
                "location.hash = arguments[0]", "#/" + "/".join([page, *params])
            )
        else:
            self.css(f'#nav a[data-page="{page}"]').click()
        self.wait(
            lambda d: (
                self.css("#view").get_attribute("data-page") == page
                and self.css("#view").get_attribute("data-loaded") == "1"
            ),
            f"the {page} page",
        )

    def problems(self) -> list[dict[str, Any]]:
        """What the browser logged at error level since the last call: script errors,
        policy violations, failed loads."""
        return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def shoot(self, page: str) -> None:
        """Save the page as console-<page>.png when VIGIL_CONSOLE_SCREENSHOTS names a folder."""
        if not SCREENSHOTS:
            return
        folder = Path(SCREENSHOTS)
        folder.mkdir(parents=True, exist_ok=True)
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        metrics = {"width": 1280, "height": min(int(height), 1600), "deviceScaleFactor": 1}
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {**metrics, "mobile": False}
        )
        try:
            self.driver.save_screenshot(str(folder / f"console-{page}.png"))
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    # -- the system -----------------------------------------------------------------------
    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return requests.request(method, self.base + path, headers=headers, timeout=10, **kw)

    def publish(self, device: str, readings: list[Reading], status: bool = False) -> None:
        """Publish as the device (its own credential), at QoS 1; with ``status``, first a
        retained online status as its agent would."""
        client = connected(self.broker.settings, self.broker.ident(device))
        topics = self.broker.topics
        try:
            if status:
                online = DeviceStatus(device=device, state="online", ts=now_ms())
                client.publish_wait(topics.status(device), online.encode(), retain=True)
            for batch in range(0, len(readings), 50):
                chunk = readings[batch : batch + 50]
                client.publish_wait(topics.data(device), encode_readings(device, chunk))
        finally:
            client.stop()

    def stored(self, device: str, metric: str) -> list[dict[str, Any]]:
        resp = self.api("GET", f"/devices/{device}/metrics/{metric}/history?limit=1000")
        return resp.json()["points"] if resp.status_code == 200 else []


@pytest.fixture
def console(browser, broker, cloud_config, cluster, run_service) -> Iterator[Console]:
    """The system's services as processes (ingest, alert engine, notifier, API) and the
    browser, its log drained."""
    config = str(cloud_config.path)
    consumers = [run_service(m, "--config", config) for m in ("ingest_service", "notifier")]
    engine = run_service("alert_engine", "--config", config)
    api = run_service("api", "--config", config)
    settings = cloud_config.config.api
    api.wait_port(settings.host, settings.port, 30)
    for proc in (*consumers, engine):
        wait_ready(proc, 30)
    base = f"http://{settings.host}:{settings.port}"
    wait_until(
        lambda: requests.get(f"{base}/health", timeout=5).json()["broker"],
        20,
        what="the API connected to the broker",
    )
    browser.get_log("browser")
    yield Console(browser, base, cloud_config.admin_token, broker, engine.log_path)
    browser.get("about:blank")


def sine(device: str, metric: str, n: int, first_id: int = 1) -> list[Reading]:
    """``n`` readings a second apart, ending now: a slow wave around 21."""
    end = now_ms()
    return [
        Reading(
            first_id + i,
            device,
            end - (n - 1 - i) * 1000,
            "sensor",
            metric,
            round(21 + 3 * math.sin(i / 6), 2),
            "C",
        )
        for i in range(n)
    ]


def test_every_page_loads_for_an_admin_and_for_a_user(console):
    console.login(console.admin_token)
    console.wait(lambda d: console.css("#whoami").text == "admin (admin)", "the admin's name")
    for page in PAGES:
        console.go(page)
        assert console.problems() == [], page
    console.go("devices")
    ids = [r.get_attribute("data-device") for r in console.all("#device-list tr[data-device]")]
    assert ids == [f"dev-{i}" for i in range(10)]
    console.go("storage")
    console.wait(lambda d: len(console.all("#servers tr[data-server]")) == 3, "three servers")
    assert console.text("#moving") == "none running"
    console.css("#repair-now").click()
    console.wait(
        lambda d: console.css("#job").get_attribute("data-state") == "done", "the repair job"
    )
    console.shoot("storage")
    assert console.problems() == []

    # A user sees their own devices and rules, and no storage.
    made = console.api("POST", "/users", json={"name": "alice"})
    assert made.status_code == 201, made.text
    console.api(
        "POST", "/rules", json={"id": "admins", "metric": "t", "op": "above", "threshold": 1}
    )
    console.css("#logout").click()
    console.wait(lambda d: console.css("#login").is_displayed(), "the login form")
    console.css("#token").send_keys(made.json()["token"]["token"])
    console.css("#login button[type=submit]").click()
    console.wait(lambda d: console.css("#whoami").text == "alice (user)", "alice's name")
    for page in PAGES:
        console.go(page)
        assert console.problems() == [], page
    assert console.all("#storage-admin-only")
    console.go("devices")
    ids = [r.get_attribute("data-device") for r in console.all("#device-list tr[data-device]")]
    assert ids == ["dev-1"]
    console.go("rules")
    assert console.all("#rule-list tr[data-rule]") == []

    # A token the API refuses: the page asks again (the 401 is the one thing logged).
    console.css("#logout").click()
    console.css("#token").send_keys("not-a-token")
    console.css("#login button[type=submit]").click()
    console.wait(lambda d: "not valid" in console.text("#login-error"), "the refusal")
    assert all("401" in e["message"] for e in console.problems())
    assert console.driver.execute_script("return sessionStorage.getItem('vigil-token')") is None


def test_a_reading_published_over_mqtt_appears_on_the_chart_without_a_reload(console):
    console.publish("dev-1", sine("dev-1", "temperature", 40), status=True)
    console.publish("dev-1", sine("dev-1", "humidity", 5, first_id=100))
    wait_until(lambda: len(console.stored("dev-1", "temperature")) == 40, 30, what="the history")
    wait_until(lambda: console.stored("dev-1", "humidity"), 30, what="a second metric")
    console.login(console.admin_token)
    console.wait(lambda d: console.all("#nav a"), "the menu")
    console.go("devices", "dev-1", "temperature")
    chart = "#chart"
    console.wait(lambda d: console.css(chart).get_attribute("data-points") == "40", "the history")
    console.wait(lambda d: console.css("#live").text == "live", "the live stream")
    assert Select(console.css("#metric")).first_selected_option.text == "temperature"
    assert sorted(o.text for o in Select(console.css("#metric")).options) == [
        "humidity",
        "temperature",
    ]
    row = console.css('#device-list tr[data-device="dev-1"]')
    assert "online" in row.text and "s ago" in row.text
    console.driver.execute_script("window.vigilSamePage = true")

    reading = Reading(1000, "dev-1", now_ms(), "sensor", "temperature", 42.42, "C")
    console.publish("dev-1", [reading])
    console.wait(lambda d: console.text("#latest") == "42.42", "the new reading on the chart")
    assert console.css(chart).get_attribute("data-points") == "41"
    assert console.driver.execute_script("return window.vigilSamePage") is True  # no reload
    assert console.css("#chart canvas").size["width"] > 300
    console.shoot("devices")
    assert console.problems() == []


def test_a_rule_created_in_the_page_fires_is_silenced_and_resolves(console):
    console.login(console.admin_token)
    console.wait(lambda d: console.all("#nav a"), "the menu")
    # a second alert, firing throughout (for the page to show both states)
    console.api(
        "POST",
        "/rules",
        json={
            "id": "low-battery",
            "metric": "battery",
            "device": "dev-2",
            "op": "below",
            "threshold": 20,
            "severity": "warning",
        },
    )
    console.go("rules")
    form = "#rule-form"
    console.css("#rule-id").send_keys("too-hot")
    console.css("#rule-name").send_keys("Too hot")
    console.css("#rule-device").send_keys("dev-3")
    console.css("#rule-metric").send_keys("temperature")
    Select(console.css("#rule-op")).select_by_value("above")
    console.css("#rule-threshold").send_keys("30")
    console.css("#rule-clear").send_keys("28")
    Select(console.css("#rule-severity")).select_by_value("critical")
    assert not console.css('[data-field="low"]').is_displayed()  # a band's field
    console.css(f"{form} button[type=submit]").click()
    console.wait(lambda d: console.all('#rule-list tr[data-rule="too-hot"]'), "the new rule")
    row = console.css('#rule-list tr[data-rule="too-hot"]')
    assert "above 30 (clears at 28)" in row.text and "dev-3" in row.text
    console.shoot("rules")
    wait_until(
        lambda: "applied: 2 rule(s)" in console.engine_log.read_text(),
        20,
        what="the two rules to reach the alert engine",
    )

    console.publish("dev-2", [Reading(1, "dev-2", now_ms(), "sensor", "battery", 12.0, "%")])
    hot_reading = Reading(10, "dev-3", now_ms() + 1, "sensor", "temperature", 35.5, "C")
    console.publish("dev-3", [*sine("dev-3", "temperature", 3), hot_reading])
    console.go("alerts")
    hot = '#firing tr[data-rule="too-hot"]'
    console.wait(lambda d: console.all(hot), "the alert of the rule made in the page")
    assert "dev-3" in console.text(hot) and "critical" in console.text(hot)
    console.css(f"{hot} button.silence").click()
    console.wait(lambda d: "silenced" in console.text(hot), "the alert silenced")
    silences = console.api("GET", "/silences").json()["silences"]
    assert [s["matchers"] for s in silences] == [{"device": "dev-3", "rule_id": "too-hot"}]
    assert console.all("#silences tr[data-silence]")

    console.publish("dev-3", [Reading(11, "dev-3", now_ms(), "sensor", "temperature", 20.0, "C")])
    console.wait(lambda d: not console.all(hot), "the alert no longer firing")
    console.wait(lambda d: console.all('#resolved tr[data-rule="too-hot"]'), "it, resolved")
    assert console.all('#firing tr[data-rule="low-battery"]')
    console.shoot("alerts")

    console.go("notifications")
    console.wait(
        lambda d: len(console.all("#notification-list tr[data-notification]")) >= 2,
        "the notifications of both alerts",
    )
    assert "too-hot" in console.text("#notification-list") or "Too hot" in console.text(
        "#notification-list"
    )
    console.shoot("notifications")

    # Edit and delete from the page.
    console.go("rules")
    console.css('#rule-list tr[data-rule="too-hot"] button.edit').click()
    threshold = console.css("#rule-threshold")
    threshold.clear()
    threshold.send_keys("40")
    console.css(f"{form} button[type=submit]").click()
    console.wait(
        lambda d: "above 40" in console.text('#rule-list tr[data-rule="too-hot"]'), "the edit"
    )
    assert console.api("GET", "/rules/too-hot").json()["threshold"] == 40
    delete = '#rule-list tr[data-rule="too-hot"] button.delete'
    console.css(delete).click()
    console.wait(lambda d: console.text(delete) == "Really delete?", "the confirmation")
    console.css(delete).click()
    console.wait(lambda d: not console.all('#rule-list tr[data-rule="too-hot"]'), "the delete")
    assert console.api("GET", "/rules/too-hot").status_code == 404
    assert console.problems() == []

"""The dashboard rendered by headless Chromium (Debian's ``chromium``) against the real server and broker."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from edgefleet.agent import latency
from tests.dashboard.fleet import TELEMETRY_N, V1_TIMED_MS, V2_TIMED_MS, XSS_EVENT, XSS_ID, Fleet

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (.ci/run does)")


def chromium(url: str, tmp_path: Path, *, screenshot: Path | None = None) -> str:
    """Load ``url`` in a fresh headless profile; return the DOM after load (or write a screenshot)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1360,1300"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*args, url], capture_output=True, timeout=60, check=True)
    return done.stdout.decode()


def signed_in_url(fleet: Fleet, path: str) -> str:
    return f"{fleet.server.url}/login?token={quote(fleet.server.admin_token)}&next={quote(path, safe='')}"


def rows_of(dom: str, attribute: str) -> list[str]:
    return re.findall(rf'<tr {attribute}="([^"]*)"', dom)


@needs_chromium
def test_overview_in_chromium(fleet: Fleet, tmp_path: Path) -> None:
    dom = chromium(signed_in_url(fleet, "/"), tmp_path)
    assert re.search(r'id="counts" data-online="4" data-offline="2"', dom)
    assert rows_of(dom, "data-device") == ["&lt;img src=x onerror=document.body.dataset.pwned=1&gt;",
                                           "cam-01", "cam-02", "cam-03", "cam-04", "cam-05"]
    versions = re.findall(r'<tr data-model="detector" data-version="(\d)"><td>detector</td><td class="num">v\d</td>'
                          r'<td class="num">(\d+)</td><td class="num">(\d+)</td>', dom)
    assert versions == [("2", "1", "1"), ("1", "3", "2")]  # (version, devices, online), newest first
    assert rows_of(dom, "data-rollout") == ["1"]
    assert "w1 0/1 active" in dom and "w2 0/1 pending" in dom
    cam02 = dom[dom.index('data-device="cam-02"'):]
    assert "⚑ psi 0.31" in cam02[:cam02.index("</tr>")]  # drift over 0.2 is flagged, 0.05 is not
    assert "⚑" not in dom[dom.index('data-device="cam-03"'):].split("</tr>")[0]
    assert "data-pwned" not in dom  # the device id was text, not markup


@needs_chromium
def test_device_page_in_chromium(fleet: Fleet, tmp_path: Path) -> None:
    dom = chromium(signed_in_url(fleet, "/devices/cam-01"), tmp_path)
    assert 'data-device="cam-01"' in dom
    lines = {m.group(1): m.group(2) for m in re.finditer(r'<polyline class="(\w+)" data-series="[^"]*" '
                                                         r'points="([^"]+)"', dom)}
    assert set(lines) == {"p50", "p95", "cpu"}
    for name, points in lines.items():
        xy = [tuple(map(float, p.split(","))) for p in points.split()]
        assert len(xy) == TELEMETRY_N, name
        assert all(b[0] > a[0] for a, b in itertools.pairwise(xy))  # time runs left to right
        assert all(b[1] < a[1] for a, b in itertools.pairwise(xy))  # rising values (SVG y grows down)
    # p95 = 2 + 0.2 i on a 0..10 axis; the last point (6.6 ms) sits at 66 % of the plot height (146 px from 28)
    assert lines["p95"].split()[-1] == f"{48 + 580:.1f},{28 + 146 - 6.6 / 10 * 146:.1f}"
    assert f"{TELEMETRY_N} samples, last seq {TELEMETRY_N}: p50 3.30 ms, p95 6.60 ms, CPU 33.0 %" in dom
    assert "update.committed" in dom and "runtime.fallback" in dom
    assert "&lt;script&gt;document.body.dataset.pwned=2&lt;/script&gt;" in dom
    assert "data-pwned" not in dom


@needs_chromium
def test_screenshot_renders(fleet: Fleet, tmp_path: Path) -> None:
    png = tmp_path / "fleet.png"
    chromium(signed_in_url(fleet, "/devices/cam-03"), tmp_path, screenshot=png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1360, 1300) and len(data) > 20_000


def test_device_page_shows_rollout_and_desired_state(fleet: Fleet) -> None:
    assigned, pending = fleet.rollout_device("assigned"), fleet.rollout_device("pending")
    assert {assigned, pending} == {"cam-03", "cam-04"}
    for device, wave, state in ((assigned, 1, "assigned"), (pending, 2, "pending")):
        html = requests.get(f"{fleet.server.url}/devices/{device}", headers=fleet.server.admin(), timeout=10).text
        assert re.search(r'<td class="num">1</td><td>detector v2</td><td><span class="pill running">running</span>'
                         rf'</td><td class="num">{wave}</td><td><span class="pill {state}">{state}</span>', html)
        assert ("<dt>desired</dt><dd>detector v2</dd>" in html) == (state == "assigned")
    html = requests.get(f"{fleet.server.url}/devices/cam-04", headers=fleet.server.admin(), timeout=10).text
    assert "no telemetry yet" in html  # cam-04 sent none: empty charts, no polyline
    assert "<polyline" not in html
    html = requests.get(f"{fleet.server.url}/devices/cam-05", headers=fleet.server.admin(), timeout=10).text
    assert "Not part of any rollout" in html


def test_versions_show_the_fleets_merged_p95(fleet: Fleet) -> None:
    html = requests.get(fleet.server.url + "/", headers=fleet.server.admin(), timeout=10).text
    shown = dict(re.findall(r'<tr data-model="detector" data-version="(\d)">.*?data-fleet-p95="([^"]*)"', html))
    for version, timed in (("1", V1_TIMED_MS), ("2", V2_TIMED_MS)):
        expected = latency.bucket_value(latency.bucket_of(sorted(timed)[94]))  # the 95th of 100
        assert float(shown[version]) == expected and abs(expected - sorted(timed)[94]) <= 0.02 * sorted(timed)[94]
    assert "fleet p95 ms" in html


def test_device_ids_and_events_are_escaped(fleet: Fleet) -> None:
    admin = fleet.server.admin()
    overview = requests.get(fleet.server.url + "/", headers=admin, timeout=10)
    assert XSS_ID not in overview.text and "<img src=x" not in overview.text
    assert "&lt;img src=x onerror=document.body.dataset.pwned=1&gt;" in overview.text
    assert 'href="/devices/%3Cimg%20src%3Dx%20onerror%3Ddocument.body.dataset.pwned%3D1%3E"' in overview.text
    csp = overview.headers["Content-Security-Policy"]
    assert "script-src 'nonce-" in csp and "default-src 'none'" in csp
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and overview.text.count("<script") == 1 and f'<script nonce="{nonce.group(1)}">' in overview.text
    page = requests.get(fleet.server.url + "/devices/" + quote(XSS_ID, safe=""), headers=admin, timeout=10)
    assert page.status_code == 200 and "<img src=x" not in page.text
    events = requests.get(fleet.server.url + "/devices/cam-01", headers=admin, timeout=10).text
    assert XSS_EVENT not in events and "&lt;script&gt;" in events


def test_sign_in(fleet: Fleet) -> None:
    url = fleet.server.url
    anonymous = requests.get(url + "/devices/cam-01", allow_redirects=False, timeout=5)
    assert (anonymous.status_code, anonymous.headers["location"]) == (303, "/login?next=%2Fdevices%2Fcam-01")
    wrong = requests.post(url + "/login", data={"token": "nope", "next": "/"}, allow_redirects=False, timeout=5)
    assert wrong.status_code == 401 and "not this server" in wrong.text and "set-cookie" not in wrong.headers
    device_token = requests.get(url + "/", headers={"Authorization": f"Bearer {fleet.tokens['cam-01']}"},
                                allow_redirects=False, timeout=5)
    assert device_token.status_code == 303  # a device token never opens the dashboard
    browser = requests.Session()
    signed = browser.post(url + "/login", data={"token": fleet.server.admin_token, "next": "//evil.example/x"},
                          allow_redirects=False, timeout=5)
    assert (signed.status_code, signed.headers["location"]) == (303, "/")  # no open redirect
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and fleet.server.admin_token not in cookie
    assert browser.get(url + "/", timeout=5).status_code == 200
    browser.cookies.set("edgefleet_dashboard", "1700000000.forged", domain="127.0.0.1")
    assert browser.get(url + "/", allow_redirects=False, timeout=5).status_code == 303
    missing = requests.get(url + "/devices/nope", headers=fleet.server.admin(), timeout=5)
    assert missing.status_code == 404 and "No device <code>nope</code>" in missing.text

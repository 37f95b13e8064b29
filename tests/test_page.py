"""The page at ``/`` in a real headless Chromium (Debian's ``chromium``, driven over the DevTools
protocol, tests/cdp.py) against a running controller whose pca-spe opened an alarm on the bundled
lab recording's cryptominer: the operator pastes the token, the page shows the alarm with its
blamed VM and metric, the findings of introspection, SPE against Q_α over the alarm, and its
verdict button closes the alarm, with the token's name as the actor. No Content-Security-Policy
violation or script error on the way. The screenshot is kept in the test's folder (``page.png``).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from cdp import chromium, chromium_binary
from conftest import ROOT, free_port, require
from pipeline import live_pipeline

BUNDLED = ROOT / "atomwatch" / "data" / "lab-cryptominer.csv"
TOKEN = "ops-page-" + "w" * 40

pytestmark = pytest.mark.slow


def test_the_page_files_carry_a_strict_content_security_policy():
    from atomwatch.controller.api import PAGE, PAGE_HEADERS, page_file

    html = page_file("index.html").decode()
    assert "<script>" not in html and "style=" not in html and "onclick" not in html, "nothing inline"
    assert "script-src 'self'" in PAGE_HEADERS["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in PAGE_HEADERS["Content-Security-Policy"]
    js = page_file("app.js").decode()
    assert "innerHTML" not in js and "eval(" not in js, "API text goes in as textContent only"
    assert "localStorage" not in js, "the token lives in sessionStorage (this tab) only"
    assert set(PAGE) == {"/", "/index.html", "/ui/app.js", "/ui/app.css"}


async def test_the_page_shows_the_alarm_its_blame_and_findings_and_gives_a_verdict(mosquitto, site, tmp_path):
    require(chromium_binary() is not None, "chromium is not installed (apt-get install chromium; .ci/setup)")
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"ops-page {TOKEN}\n")
    tokens.chmod(0o600)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    pipe = live_pipeline(
        mosquitto.url,
        site,
        ("replay", "pca-spe"),
        {"replay": {"trace": str(BUNDLED), "loop": True}, "pca-spe": {"confirm": 3}},
        ["pca-spe"],
        agent_tick=0.1,
        controller_tick=0.1,
        rows="data",
        http=f"127.0.0.1:{port}",
        http_tokens=str(tokens),
    )
    c = pipe.controller
    await pipe.start()
    try:
        await pipe.wait_for(lambda: c.alarms.counts()["open"] >= 1, 60, "the cryptominer's alarm")
        alarm = c.alarms.list(state="open")[0]
        await pipe.wait_for(lambda: c.alarms.get(alarm.id).level >= 5, 30, "the alarm to grow")
        c.add_findings(
            alarm.id,
            "introspect",
            {
                "kind": "introspection",
                "summary": "1 process not in the baseline",
                "vm_name": "vm2",
                "suspects": [{"pid": 4242, "name": "xmrig<b>", "score": 9.5, "evidence": ["new since the baseline"]}],
            },
        )
        blamed = c.alarms.get(alarm.id).blame[0]
        with urllib.request.urlopen(base + "/", timeout=10) as r:
            csp = r.headers["Content-Security-Policy"]
            assert r.headers["Content-Type"].startswith("text/html") and "script-src 'self'" in csp

        async with chromium() as page:
            await page.navigate(base + "/")
            await page.wait_for("!document.getElementById('login').hidden", what="the token form")
            # a wrong token is refused and said so
            await page.evaluate(
                "document.getElementById('token').value = 'x'.repeat(40);"
                "document.getElementById('login').requestSubmit()"
            )
            said = await page.wait_for(
                "!document.getElementById('login').hidden && document.getElementById('login-error').textContent",
                what="the refusal",
            )
            assert "wrong token" in said
            page.events.clear()  # (the browser logs the refused request's 401 as an error)
            await page.evaluate(
                f"document.getElementById('token').value = {json.dumps(TOKEN)};"
                "document.getElementById('login').requestSubmit()"
            )
            await page.wait_for(
                f"document.querySelector('#open tbody tr[data-alarm=\"{alarm.id}\"]') !== null", what="the open alarm"
            )
            await page.wait_for("document.querySelectorAll('#findings .finding').length > 0", what="the findings")
            text = await page.evaluate("document.body.innerText")
            row = await page.evaluate(f"document.querySelector('#open tr[data-alarm=\"{alarm.id}\"]').innerText")
            assert f"{blamed['vm_name']} / {blamed['metric']}" in row, row
            assert f"Alarm #{alarm.id}: pca-spe on {site}/hv1" in text
            blame_cells = await page.evaluate(
                "[...document.querySelectorAll('#blame tbody tr:first-child td')].map(td => td.textContent)"
            )
            assert blame_cells[:2] == [blamed["vm_name"], blamed["metric"]], blame_cells
            assert "suspect pid 4242 xmrig<b>" in text, "guest text shown as text, never as HTML"
            assert await page.evaluate("document.querySelectorAll('#findings b').length") == 0
            points = await page.evaluate(
                "[...document.querySelectorAll('#chart polyline')].map(p => p.getAttribute('points').split(' ').length)"
            )
            assert len(points) == 2 and points[0] == points[1] >= 5, points  # Q_α and SPE over the alarm's rows
            assert await page.evaluate("!document.getElementById('verdict').hidden")
            shot = await page.screenshot(tmp_path / "page.png")
            assert shot.stat().st_size > 20_000

            await page.evaluate("document.getElementById('normal').click()")
            result = await page.wait_for(
                "document.getElementById('verdict-result').textContent", what="the verdict's answer"
            )
            assert result == f"verdict normal given: alarm #{alarm.id} is closed", result
            errors = page.console_errors()
            assert not errors, errors
        after = c.alarms.get(alarm.id)
        assert after.state == "closed" and after.verdict == "normal"
        actors = [e["actor"] for e in c.alarms.audit(alarm.id) if e["action"] == "verdict normal"]
        assert actors == ["ops-page"], "the token's name is the actor"
        print(f"screenshot: {shot}")
    finally:
        await asyncio.wait_for(pipe.stop(), 30)

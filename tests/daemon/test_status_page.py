"""The live status page in a real browser: headless Chromium driven by selenium during a
replay. Positions appear on their own (server-sent events); the operator enters the token
and presses Halt; the page shows HALTED; no order reaches the broker after that."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from kernel.events import BarBatch, OrderIntent, TradingStateChanged
from tests.daemon.http_kit import TOKEN, operated, replay_settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise FileNotFoundError("chromium and chromium-driver are needed: make system-deps")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1440,1500",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _positions(driver: webdriver.Chrome) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#positions tbody tr[data-symbol]")
    return [r.get_attribute("data-symbol") or "" for r in rows]


def _quantities(driver: webdriver.Chrome) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#positions tbody tr[data-symbol]")
    return {r.get_attribute("data-symbol") or "": r.find_elements(By.TAG_NAME, "td")[1].text
            for r in rows}


class TestStatusPage:
    async def test_page_when_replay_trades_and_operator_halts_then_halted_and_no_order_after(
        self, tmp_path: Path, browser: webdriver.Chrome
    ) -> None:
        # Arrange: a replay at 600x (0.1 s a bar), every order the broker receives timed
        settings = replay_settings(tmp_path, speed="600")
        submits: list[tuple[float, str]] = []
        halted_at: list[float] = []
        async with operated(settings) as (daemon, _ops, base):
            broker: Any = daemon.system.broker
            real_submit = broker.submit

            async def timed_submit(intent: OrderIntent) -> None:
                submits.append((time.monotonic(), intent.client_order_id))
                await real_submit(intent)

            broker.submit = timed_submit
            daemon.system.bus.subscribe(TradingStateChanged, lambda e: e.new == "HALTED"
                                 and halted_at.append(time.monotonic()))
            after_halt: list[int] = []

            async def stop_later(batch: BarBatch) -> None:
                if halted_at:
                    after_halt.append(daemon.system.stats.bar_batches)
                if len(after_halt) >= 30 or daemon.system.stats.bar_batches >= 330:
                    daemon.request_stop("browser test done")

            daemon.after_batch.append(stop_later)
            wait = WebDriverWait(browser, 30, poll_frequency=0.2)
            await asyncio.to_thread(browser.get, base + "/")
            run = asyncio.create_task(daemon.run())

            # Act 1: positions appear on the page without a reload
            await asyncio.to_thread(wait.until, lambda d: len(_positions(d)) >= 3)
            shown = await asyncio.to_thread(_positions, browser)
            state_before = await asyncio.to_thread(
                lambda: browser.find_element(By.ID, "state").text)

            # Act 2: the operator enters the token and presses Halt
            def halt() -> None:
                browser.find_element(By.ID, "token").send_keys(TOKEN)
                browser.find_element(By.ID, "why-input").send_keys("browser halt")
                browser.find_element(By.ID, "btn-halt").click()

            await asyncio.to_thread(halt)
            await asyncio.to_thread(
                wait.until, lambda d: d.find_element(By.ID, "state").text == "HALTED")
            result = await asyncio.to_thread(
                lambda: browser.find_element(By.ID, "action-result").text)
            # the replay goes on; the page keeps updating; then the shot
            await asyncio.wait_for(run, 60)
            await asyncio.to_thread(
                wait.until, lambda d: d.find_elements(
                    By.XPATH, "//table[@id='rejects']//td[text()='TRADING_HALTED']"))
            # the page converges on the final books: every position, with its quantity
            final = {s: str(p.qty) for s, p in daemon.system.portfolio.positions.items() if p.qty}
            await asyncio.to_thread(wait.until, lambda d: _quantities(d) == final)
            shot = tmp_path / "status-page.png"
            await asyncio.to_thread(browser.execute_script, "window.scrollTo(0, 0)")
            await asyncio.to_thread(browser.save_screenshot, str(shot))
            state_after = await asyncio.to_thread(
                lambda: browser.find_element(By.ID, "state").text)
            live = await asyncio.to_thread(
                lambda: browser.find_element(By.ID, "live").get_attribute("data-live"))
        # Assert: the page showed what the books held, and the state it was put in
        assert state_before == "ACTIVE"
        assert set(shown) <= set(daemon.system.portfolio.positions), "only symbols the books held"
        assert state_after == "HALTED" and result.startswith("halt done: state HALTED")
        assert daemon.system.risk_state.snapshot()["reason"] == "browser halt"
        assert live == "1"
        # ... and nothing reached the broker after the halt, though signals went on
        assert halted_at and submits
        assert [cid for t, cid in submits if t > halted_at[0]] == []
        assert len(after_halt) >= 20 and daemon.system.stats.denied["TRADING_HALTED"] > 0
        assert shot.stat().st_size > 20_000
        if os.environ.get("TRADINGD_UPDATE_SCREENSHOT") == "1":  # refresh the README's copy
            docs = REPO / "docs"
            docs.mkdir(exist_ok=True)
            shutil.copyfile(shot, docs / "status-page.png")

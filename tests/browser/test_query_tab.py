"""The Query tab of the Clean Room sidebar, in a real JupyterLab driven through Debian's Chromium by Playwright.

A demo room (two site processes) is connected to the server; in the Query tab a person asks a DP count by
label (the table shows each site, the total and its 95% interval, the chart an error bar per label), then a
secure histogram (the total only), then a query over the sites' policy (the typed refusal shows, and the
next query is still answered). JupyterLab and Chromium are the shared fixtures of tests/browser/conftest.py;
skips only when Debian's Chromium (/usr/bin/chromium) is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

if not Path("/usr/bin/chromium").exists():
    pytest.skip(
        "Debian's Chromium is not installed at /usr/bin/chromium "
        "(apt-get install -y --no-install-recommends chromium; .ci/run does this)",
        allow_module_level=True,
    )

from playwright.sync_api import expect  # noqa: E402


def test_the_query_tab_asks_the_sites_and_draws_the_answer(lab, page, ui):
    room = lab.api("fedjax-room/rooms/demo", "POST", {"sites": 2, "dataset": "digits"}, timeout=300)
    assert room["id"] == "room-1"
    lab.room_pids += ui.processes_under(room["state_dir"])
    ui.open_lab(page, lab)
    tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="fedjax-room-query"]')
    expect(tab).to_be_visible()
    tab.click()
    panel = page.locator("#fedjax-room-query")
    form = panel.locator(".fjr-query-form")
    expect(form.locator('select[name="room"] option')).to_have_text(["room-1"])

    form.locator('select[name="kind"]').select_option("count_by_label")
    form.locator('input[name="epsilon"]').fill("0.5")
    panel.get_by_role("button", name="Run query").click()
    result = panel.locator(".fjr-query-result")
    expect(result.locator("tbody tr")).to_have_count(10)
    expect(result.locator("th")).to_have_text(["", "all sites", "95% CI", "site-a", "site-b"])
    expect(result.locator(".fjr-q-errorbar")).to_have_count(10)
    expect(result.locator(".fjr-query-caption")).to_contain_text("ε = 0.5")
    result.scroll_into_view_if_needed()
    ui.shot(page, "query-count-by-label")

    form.locator('select[name="kind"]').select_option("histogram")
    form.locator('input[name="feature"]').fill("pixel_3_4")
    form.locator('input[name="bins"]').fill("0, 0.25, 0.5, 0.75, 1")
    form.locator('input[name="secure"]').check()
    panel.get_by_role("button", name="Run query").click()
    expect(result.locator(".fjr-query-caption")).to_contain_text("secure aggregation: total only")
    expect(result.locator("tbody tr")).to_have_count(4)
    expect(result.locator("th")).to_have_text(["", "all sites", "95% CI"])  # the coordinator saw only the sum
    expect(result.locator(".fjr-q-bar")).to_have_count(4)
    result.scroll_into_view_if_needed()
    ui.shot(page, "query-secure-histogram")

    form.locator('input[name="epsilon"]').fill("50")
    panel.get_by_role("button", name="Run query").click()
    message = panel.locator(".fjr-query-message")
    expect(message).to_contain_text("Refused:")
    expect(message).to_contain_text("outside what this site allows")
    ui.shot(page, "query-refused")

    form.locator('input[name="epsilon"]').fill("0.2")  # the room still answers
    panel.get_by_role("button", name="Run query").click()
    expect(message).to_have_text("")
    expect(result.locator("tbody tr")).to_have_count(4)

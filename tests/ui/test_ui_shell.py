"""The built UI alone: served under /ui/ by a plain static server with no API behind
it. The shell must render, name every missing endpoint in its banner, show each
view's notice instead of crashing, and fetch nothing from outside its origin."""

from __future__ import annotations

import re

from tests.ui.servers import UIServer

VIEWS = ["cluster", "queue", "jobs", "models", "events", "policy", "playground"]


def test_shell_renders_and_names_missing_endpoints(dist, open_page):
    with UIServer(dist) as srv:
        w = open_page(srv.origin)
        w.page.goto(srv.url)
        w.page.get_by_test_id("shell").wait_for()
        for view in VIEWS:
            assert w.page.get_by_test_id(f"nav-{view}").is_visible()
        banner = w.page.get_by_test_id("banner-missing")
        banner.wait_for()
        # The start-up reads: the snapshot, the server's info and the fact stream.
        for endpoint in ("GET /v2/cluster", "GET /v2/info", "GET /v2/events"):
            w.page.locator(f'[data-endpoint="{endpoint}"]').wait_for()
        assert w.page.get_by_test_id("stream-state").inner_text() == "facts: no fact stream"
        w.page.get_by_test_id("view-cluster").get_by_test_id("view-missing").wait_for()
        print("screenshot:", w.screenshot("shell-missing-endpoints"))

        for view in VIEWS:
            w.page.get_by_test_id(f"nav-{view}").click()
            w.page.get_by_test_id(f"view-{view}").wait_for()
            w.page.wait_for_timeout(300)
            w.screenshot(f"shell-{view}")

        # The policy and playground views probe their own endpoints when opened.
        missing = {e.get_attribute("data-endpoint")
                   for e in w.page.locator("[data-endpoint]").all()}
        assert {"GET /v2/admin/policy", "GET /v1/models"} <= missing, missing
        assert w.page_errors == [], w.page_errors
        # Console errors may only be the browser's notes about the 404/501 answers.
        others = [m for m in w.console_errors if not re.search(r"Failed to load resource", m)]
        assert others == [], others
        assert w.foreign_requests() == [], w.foreign_requests()


def test_actions_report_missing_endpoints(dist, open_page):
    """An operator action against a gateway without the endpoint says so; no crash."""
    with UIServer(dist) as srv:
        w = open_page(srv.origin)
        w.page.goto(srv.url + "#/policy")
        w.page.get_by_test_id("view-policy").wait_for()
        w.page.get_by_test_id("validate").click()
        msg = w.page.get_by_test_id("policy-message")
        msg.wait_for()
        assert "POST /v2/admin/policy:validate" in msg.inner_text()
        assert "not available" in msg.inner_text()
        w.page.locator('[data-endpoint="POST /v2/admin/policy:validate"]').wait_for()
        assert w.page_errors == []


def test_deep_link_to_a_job(dist, open_page):
    with UIServer(dist) as srv:
        w = open_page(srv.origin)
        w.page.goto(srv.url + "#/jobs/job-123")
        w.page.get_by_test_id("view-jobs").wait_for()
        w.page.locator('[data-endpoint="GET /v2/tasks/{id}"]').wait_for()
        assert w.page_errors == []

"""The cluster view is live from the fact stream, not from polling: in a real browser on
a real `llama-orch up` (orchestrator, pool manager, gateway; `sim` workers as processes).

The pool declares two simulated devices, sim-0 (8 TiB) and sim-1 (9 TiB); each `sim`
model needs 5 TiB on one device, so each device holds one worker and the built-in
policy puts the first on sim-1 (most free), the second on sim-0.

What the UI does by design (frontend/src/store.ts) is what is asserted, exactly:
  - GET /v2/cluster once at start, then GET /v2/events, one long-lived request;
  - a re-read of /v2/cluster only after a fact the state cannot take in alone:
    worker.ready, worker.stopped, worker.failed, pool.joined (REREAD_ON; worker.starting
    carries its device_ids here, so it needs none), debounced: one re-read for every
    such fact that comes 500 ms or more after the last;
  - device memory (the bar's used bytes) from pool.heartbeat facts or those re-reads.
An added periodic poll of any endpoint makes this test fail: requests in an idle period,
or more /v2/cluster reads than re-read facts.

a. Across a job that starts a worker and completes, then idle periods, the page makes
   no request but its debounced re-reads, and keeps its one fact stream.
b. With every /v2/cluster request held unanswered by the browser (page.route), the
   device memory bar still goes up when a worker starts and back down when it is
   stopped (from the cluster view's Stop, and through the admin API): pool.heartbeat
   facts alone moved the bar's used bytes, worker facts its per-worker segment.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.request
from urllib.parse import urlparse

import pytest

from tests.stack import Stack, sim_config
from tests.ui.test_ui_policy_pin import get, run_job, worker_of
from tests.ui.test_ui_stack import (  # noqa: F401 (ui is a fixture)
    CLUSTER,
    FACTS,
    needs,
    no_page_errors,
    ui,
)

pytestmark = pytest.mark.e2e

TIB = 1 << 40
DEVICES = {"sim-0": 8 * TIB, "sim-1": 9 * TIB}
MODELS = {name: (1, 5 * TIB) for name in ("alpha", "bravo")}
STOP_WORKER = ("DELETE", "/v2/admin/workers/w-1")
REREAD_ON = {"worker.ready", "worker.stopped", "worker.failed", "pool.joined"}
# Each idle period: this much real time, and the page's own clock (Playwright's fake
# timers) run forward by IDLE_CLOCK, firing every timer due meanwhile, so a poll of any
# period up to IDLE_CLOCK would show. Nothing is timed.
IDLE_MS = 3_000
IDLE_CLOCK = "10:00"


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path, extra_config=sim_config(tmp_path, DEVICES, MODELS)).start()
    yield s
    s.stop()


# ---- the fact stream, read beside the browser (to know which facts it was sent) ----------

def facts_between(stack: Stack, after: int, upto: int, timeout: float = 30) -> list[dict]:
    """The facts with ids in (after, upto], from GET /v2/events."""
    if upto <= after:
        return []
    conn = http.client.HTTPConnection("127.0.0.1", stack.gateway_port, timeout=timeout)
    try:
        conn.request("GET", f"/v2/events?after={after}", headers={"Accept": "text/event-stream"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        out = []
        while True:
            line = resp.readline()
            assert line, f"the fact stream ended before fact {upto}"
            if line.startswith(b"data:"):
                fact = json.loads(line[5:])
                if fact["id"] > upto:
                    return out
                out.append(fact)
                if fact["id"] == upto:
                    return out
    finally:
        conn.close()


def last_fact_id(stack: Stack) -> int:
    return get(stack, "/v2/cluster")["fact_id"]


def device_memory(fact: dict, device: str) -> int:
    (d,) = [d for d in fact["attributes"]["devices"] if d["id"] == device]
    return int(d["memory_used_bytes"])


# ---- what the page asks for, and what its bars show ----------------------------------------

class Requests:
    """Every request the page makes from now on, as (method, path)."""

    def __init__(self, page):
        self.seen: list[tuple[str, str]] = []
        page.on("request", lambda r: self.seen.append((r.method, urlparse(r.url).path)))

    def since(self, mark: int) -> list[tuple[str, str]]:
        return self.seen[mark:]


def bar(w, device: str):
    return w.page.locator(f'[data-device="{device}"] [data-testid="membar"]')


def bar_shows(w, device: str, used: str, total: str) -> None:
    """Until the device's bar reads `used / total`."""
    bar(w, device).locator(".membar-text span:last-child").filter(
        has_text=re.compile(rf"^{used} / {total} \(")).wait_for()


def reading(w, device: str) -> dict:
    """The bar as shown: its text, aria-valuenow, and each segment's title and width."""
    return bar(w, device).evaluate("""b => ({
        text: b.querySelector('.membar-text span:last-child').textContent.trim(),
        valuenow: Number(b.querySelector('[role=meter]').getAttribute('aria-valuenow')),
        segs: [...b.querySelectorAll('.membar-seg')].map(s => ({
            title: s.title, kind: [...s.classList].find(c => c.startsWith('seg-')),
            width: parseFloat(s.style.width)}))})""")


def until(w, what: str, ok, timeout_s: float = 60) -> None:
    """Poll `ok()` while the page keeps running (its events keep being delivered)."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(what)
        w.page.wait_for_timeout(200)


def idle(w) -> None:
    w.page.wait_for_timeout(IDLE_MS)
    w.page.clock.run_for(IDLE_CLOCK)
    w.page.wait_for_timeout(IDLE_MS)


def is_cluster(url: str) -> bool:
    return urlparse(url).path == "/v2/cluster"


def stream_live(w) -> None:
    w.page.locator('[data-testid="stream-state"]:has-text("live")').wait_for()


def test_cluster_view_is_live_from_facts_without_polling(ui):
    needs(CLUSTER, FACTS, STOP_WORKER)
    stack, w = ui("cluster")
    page = w.page
    # The UI starts afresh under the page's fake clock (time still flows on its own).
    page.clock.install()
    page.reload()
    stream_live(w)
    for device, total in (("sim-0", "8 TiB"), ("sim-1", "9 TiB")):
        bar_shows(w, device, "0 B", total)
    reqs = Requests(page)

    # ---- a. no polling -------------------------------------------------------------------
    first = last_fact_id(stack)
    idle(w)
    # Idle (pool heartbeats keep coming, no fact the state needs a re-read for): nothing.
    assert reqs.since(0) == [], reqs.since(0)
    w.screenshot("stack-live-idle")

    run_job(stack, "alpha", seed=1)  # a worker starts on sim-1, the job completes
    alpha, alpha_dev = worker_of(w, "alpha")
    assert alpha_dev == "sim-1"
    page.locator(f'[data-worker="{alpha}"]').filter(has_text=re.compile(r"\b0/8 jobs")).wait_for()
    bar_shows(w, "sim-1", "5 TiB", "9 TiB")
    idle(w)
    w.screenshot("stack-live-worker-ready")
    stream_live(w)
    mark_a = len(reqs.seen)
    seen_a = reqs.since(0)
    facts_a = facts_between(stack, first, last_fact_id(stack))
    codes = [f["code"] for f in facts_a]
    for code in ("job.admitted", "worker.starting", "worker.ready", "job.finished",
                 "pool.heartbeat"):
        assert code in codes, (code, codes)  # the cluster did change meanwhile
    starting = [f for f in facts_a if f["code"] == "worker.starting"]
    assert all(f["attributes"].get("device_ids") for f in starting), starting
    rereads = [f for f in facts_a if f["code"] in REREAD_ON]
    cluster_reads = [r for r in seen_a if r == ("GET", "/v2/cluster")]
    # No new fact stream (it stayed one request), nothing but debounced re-reads, and
    # at least the one that worker.ready asks for.
    assert [r for r in seen_a if r != ("GET", "/v2/cluster")] == [], seen_a
    assert 1 <= len(cluster_reads) <= len(rereads), (seen_a, [f["code"] for f in rereads])

    # ---- b. the bars move from facts alone ---------------------------------------------------
    # From here on the browser answers no /v2/cluster request: each is held, unanswered,
    # until the end. So what the bars show can only have come from the fact stream.
    held = []
    answered = []
    page.route(is_cluster, lambda route: held.append(route))  # a function, not a builtin
    page.on("response", lambda r: answered.append(r.url) if is_cluster(r.url) else None)
    first_b = last_fact_id(stack)

    before = reading(w, "sim-0")
    assert before["valuenow"] == 0 and before["segs"] == [], before
    run_job(stack, "bravo", seed=2)  # sim-1 has 4 TiB free: bravo's worker goes to sim-0
    bravo, bravo_dev = worker_of(w, "bravo")
    assert bravo_dev == "sim-0"
    page.locator(f'[data-worker="{bravo}"] .badge').filter(has_text="ready").wait_for()
    bar_shows(w, "sim-0", "5 TiB", "8 TiB")
    up = reading(w, "sim-0")
    assert up["valuenow"] == 63, up  # 5 of 8 TiB
    (seg,) = [s for s in up["segs"] if s["kind"] == "seg-worker"]
    assert seg["title"].startswith(f"{bravo} (bravo): ") and seg["width"] > 60, up
    # worker.ready asked for a re-read (by design); it is still held.
    until(w, "no /v2/cluster re-read after worker.ready", lambda: len(held) >= 1)
    assert answered == [], answered
    w.screenshot("stack-live-heartbeat-up")

    # Stopped from the cluster view: the worker leaves (worker.stopped), the bar comes
    # down (the next pool.heartbeat); the re-read worker.stopped asks for is held.
    page.locator(f'[data-worker="{bravo}"] button:has-text("Stop")').click()
    page.locator(f'[data-worker="{bravo}"]').wait_for(state="detached")
    bar_shows(w, "sim-0", "0 B", "8 TiB")
    down = reading(w, "sim-0")
    assert down["valuenow"] == 0 and down["segs"] == [], down
    until(w, "no /v2/cluster re-read after worker.stopped", lambda: len(held) >= 2)
    w.screenshot("stack-live-heartbeat-down-ui-stop")

    # Stopped through the admin API: the same, on sim-1.
    req = urllib.request.Request(f"{stack.base_url}/v2/admin/workers/{alpha}", method="DELETE")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    page.locator(f'[data-worker="{alpha}"]').wait_for(state="detached")
    bar_shows(w, "sim-1", "0 B", "9 TiB")
    assert reading(w, "sim-1")["segs"] == [], reading(w, "sim-1")
    until(w, "no /v2/cluster re-read after the second worker.stopped", lambda: len(held) >= 3)
    page.wait_for_timeout(1_000)  # room for a stray request to show
    assert answered == [], answered
    w.screenshot("stack-live-heartbeat-down-api-stop")

    seen_b = reqs.since(mark_a)
    facts_b = facts_between(stack, first_b, last_fact_id(stack))
    rereads_b = [f for f in facts_b if f["code"] in REREAD_ON]
    # bravo ready, bravo stopped, alpha stopped: each waited for above, so one re-read each.
    assert [(f["code"], f["worker_id"]) for f in rereads_b] == [
        ("worker.ready", bravo), ("worker.stopped", bravo), ("worker.stopped", alpha)], rereads_b
    # The page asked for nothing else: the re-reads, and the Stop it was told to make.
    assert seen_b == [("GET", "/v2/cluster"), ("DELETE", f"/v2/admin/workers/{bravo}"),
                      ("GET", "/v2/cluster"), ("GET", "/v2/cluster")], seen_b
    assert len(held) == 3
    # The stream did carry the bars' numbers: sim-0 at 5 TiB, then back at 0.
    sim0 = [device_memory(f, "sim-0") for f in facts_b if f["code"] == "pool.heartbeat"]
    assert 5 * TIB in sim0 and sim0[-1] == 0, sim0
    assert device_memory([f for f in facts_b if f["code"] == "pool.heartbeat"][-1], "sim-1") == 0

    # Let the held re-reads through: the snapshot agrees with what the facts showed.
    for route in held:
        route.continue_()
    page.unroute(is_cluster)
    until(w, "the held re-reads were never answered", lambda: len(answered) == 3)
    page.wait_for_timeout(1_000)
    for device, total in (("sim-0", "8 TiB"), ("sim-1", "9 TiB")):
        bar_shows(w, device, "0 B", total)
    assert page.locator("[data-device] [data-worker]").count() == 0
    stream_live(w)
    no_page_errors(w)

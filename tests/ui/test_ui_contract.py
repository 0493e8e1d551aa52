"""The UI against a stub of its HTTP contract (docs/UI.md; tests/ui/contract_stub.py):
each view renders the contract's data, live facts change what it shows without a
reload, and each operator action calls its endpoint and shows the fact it caused."""

from __future__ import annotations

import pytest

from tests.ui.contract_stub import BIG, TINY, ContractStub
from tests.ui.servers import UIServer


@pytest.fixture
def stub_ui(dist, open_page):
    stubs = []

    def _start(mode: str = "home", view: str = "cluster"):
        stub = ContractStub(mode)
        srv = UIServer(dist, api=stub).__enter__()
        stubs.append(srv)
        w = open_page(srv.origin)
        w.page.goto(f"{srv.url}#/{view}")
        w.page.get_by_test_id("shell").wait_for()
        w.page.locator('[data-testid="stream-state"]:has-text("live")').wait_for()
        return stub, w

    yield _start
    for srv in stubs:
        srv.__exit__(None, None, None)


def done_action(w, label_part: str):
    """The activity entry for an action whose fact arrived."""
    entry = w.page.get_by_test_id("action").filter(has_text=label_part).first
    entry.get_by_test_id("action-fact").wait_for()
    return entry.inner_text()


def no_errors(w):
    assert w.page_errors == [], w.page_errors
    assert w.console_errors == [], w.console_errors
    assert w.foreign_requests() == [], w.foreign_requests()
    assert not w.page.get_by_test_id("banner-missing").is_visible()


def test_cluster_view_and_live_worker(stub_ui):
    stub, w = stub_ui()
    pool = w.page.locator('[data-pool="local"]')
    pool.locator('[data-worker="w-1"]').wait_for()
    assert pool.get_by_test_id("pool-state").inner_text() == "available"
    edge = w.page.locator('[data-pool="edge"]')
    assert edge.get_by_test_id("pool-state").inner_text() == "draining"
    # Memory bars: one per device plus RAM; GPU 0 holds w-1's 52 GiB.
    gpu0 = pool.locator('[data-device="GPU-0aaaa-bbbb"]')
    assert "60 GiB / 140 GiB" in gpu0.get_by_test_id("membar").inner_text()
    assert gpu0.get_by_test_id("pin-badge").inner_text() == "pinned tiny"
    w.screenshot("contract-cluster")

    # Start a worker: the POST, then worker.starting and worker.ready facts.
    pool.get_by_test_id("start-model").select_option("big")
    pool.get_by_test_id("start-worker").click()
    text = done_action(w, "Start big on local")
    assert "worker.starting" in text or "worker.ready" in text
    new = [c for c in stub.calls if c[1] == "/v2/admin/workers"]
    assert new and new[0][2]["model"] == "big" and new[0][2]["pool_id"] == "local"
    worker_id = next(f["worker_id"] for f in stub.facts if f["code"] == "worker.starting")
    pool.locator(f'[data-worker="{worker_id}"] .badge:has-text("ready")').wait_for()

    # Drain the pool: the fact flips its state.
    pool.get_by_test_id("drain").click()
    done_action(w, "Drain local")
    pool.locator('[data-testid="pool-state"]:has-text("draining")').wait_for()

    # A fact from elsewhere (another operator's stop) updates the view too.
    stub.publish("worker.stopped", "stopped", pool_id="local", worker_id="w-1", model_ref=TINY)
    pool.locator('[data-worker="w-1"]').wait_for(state="detached")
    w.screenshot("contract-cluster-after")
    no_errors(w)


def test_queue_shows_why_jobs_wait(stub_ui):
    stub, w = stub_ui(view="queue")
    inter = w.page.locator('[data-priority="interactive"]')
    batch = w.page.locator('[data-priority="batch"]')
    assert inter.locator('[data-job="job-q1"]').get_by_test_id("waiting-reason").inner_text() \
        == "no free memory on any device"
    q2 = batch.locator('[data-job="job-q2"]')
    assert q2.get_by_test_id("waiting-reason").inner_text() == "quota"
    # A new job arrives and the scheduler says why it waits: both from facts.
    stub.publish("job.admitted", "admitted for big", job_id="job-new", model_ref=BIG,
                 priority="batch")
    stub.publish("job.waiting", "all workers busy; waiting is faster than starting",
                 job_id="job-new", model_ref=BIG, level="debug")
    row = batch.locator('[data-job="job-new"]')
    row.get_by_test_id("waiting-reason").filter(has_text="waiting is faster").wait_for()
    w.screenshot("contract-queue")
    # Dispatched: it leaves the queue for the running table.
    stub.publish("job.dispatched", "free slot", job_id="job-new", worker_id="w-1",
                 pool_id="local", model_ref=BIG, attempt=1, running=2, slots=4)
    row.wait_for(state="detached")
    # Cancel a queued job: DELETE /v2/tasks/{id}, then job.cancelled.
    inter.locator('[data-job="job-q1"] button:has-text("Cancel")').click()
    assert "job.cancelled" in done_action(w, "Cancel job-q1")
    inter.locator('[data-job="job-q1"]').wait_for(state="detached")
    no_errors(w)


def test_job_timeline(stub_ui):
    stub, w = stub_ui(view="jobs/job-r1")
    w.page.get_by_test_id("timeline").locator("tr.ev-started").wait_for()
    assert w.page.get_by_test_id("job-output").inner_text().endswith("Once upon a time")
    assert "3 token events" in w.page.get_by_test_id("timeline").inner_text()
    w.screenshot("contract-job")
    no_errors(w)


def test_models_pin_preload_evict(stub_ui):
    stub, w = stub_ui(view="models")
    big = w.page.locator('[data-model="big"] [data-pool="local"]')
    tiny = w.page.locator('[data-model="tiny"] [data-pool="local"]')
    tiny.get_by_test_id("in-vram").wait_for()
    assert tiny.get_by_test_id("pinned").inner_text() == "pinned #0"
    assert big.get_by_test_id("cached").is_visible()
    assert not big.get_by_test_id("in-ram").is_visible()

    big.locator('label.check:has-text("#1") input').check()
    big.get_by_test_id("pin").click()
    assert "model.pinned" in done_action(w, "Pin big on local to #1")
    big.locator('[data-testid="pinned"]:has-text("#1")').wait_for()
    pin_calls = [c for c in stub.calls if c[1] == "/v2/admin/pins"]
    assert pin_calls[-1][2] == {"model": "big", "pool_id": "local",
                                "device_ids": ["GPU-1aaaa-bbbb"]}

    big.get_by_test_id("preload").click()
    done_action(w, "Preload big on local")
    big.get_by_test_id("in-ram").wait_for()

    # Evicting a pinned model is refused: the server's message shows, nothing breaks.
    big.get_by_test_id("evict").click()
    entry = w.page.get_by_test_id("action").filter(has_text="Evict big").first
    entry.locator(".act-status:has-text('unpin it first')").wait_for()

    big.get_by_test_id("unpin").click()
    done_action(w, "Unpin big on local")
    big.get_by_test_id("pinned").wait_for(state="detached")
    big.get_by_test_id("evict").click()
    w.page.locator('[data-testid="action"]:has-text("Evict big") [data-testid="action-fact"]'
                   ).first.wait_for()
    big.get_by_test_id("in-ram").wait_for(state="detached")
    w.screenshot("contract-models")
    assert w.page_errors == []


def test_event_feed_filters(stub_ui):
    stub, w = stub_ui(view="events")
    feed = w.page.get_by_test_id("feed")
    feed.locator('[data-code="job.dispatched"]').wait_for()  # history before the snapshot
    stub.publish("worker.failed", "worker exited", level="error", pool_id="local",
                 worker_id="w-9", model_ref=TINY, exit_code=137)
    feed.locator('[data-code="worker.failed"]').wait_for()
    w.page.get_by_test_id("filter-kind").select_option("worker.failed")
    assert feed.locator("tbody tr").count() == 1
    w.page.get_by_test_id("filter-kind").select_option("")
    w.page.get_by_test_id("filter-job").fill("job-r1")
    codes = {r.get_attribute("data-code") for r in feed.locator("tbody tr[data-code]").all()}
    assert codes == {"job.admitted", "job.dispatched"}
    w.page.get_by_test_id("filter-job").fill("")
    feed.locator('[data-code="worker.failed"]').click()
    assert '"exit_code":137' in feed.locator("tr.attrs").inner_text()
    w.screenshot("contract-events")
    no_errors(w)


def test_policy_validate_dry_run_activate_rollback(stub_ui):
    stub, w = stub_ui(view="policy")
    w.page.get_by_test_id("policy-active").filter(has_text="version 1").wait_for()
    w.page.get_by_test_id("validate").click()
    w.page.get_by_test_id("valid").wait_for()

    w.page.get_by_test_id("dry-run").click()
    w.page.get_by_test_id("dry-policy").filter(has_text="start_worker").wait_for()
    assert "wait" in w.page.get_by_test_id("dry-builtin").inner_text()
    assert "no free memory" in w.page.get_by_test_id("dry-builtin").inner_text()
    w.screenshot("contract-policy-dryrun")

    # A syntax error shows as a problem, in the list and in the editor's gutter.
    editor = w.page.get_by_test_id("lua-editor")
    editor.click()
    w.page.keyboard.press("Control+End")
    w.page.keyboard.type("\nsyntax error here")
    w.page.get_by_test_id("validate").click()
    w.page.get_by_test_id("invalid").wait_for()
    lines = w.page.locator(".cm-line").count()
    assert f"line {lines}:" in w.page.get_by_test_id("problems").inner_text()
    w.page.locator(".cm-lint-marker-error").first.wait_for()
    w.page.keyboard.press("Control+z")

    w.page.once("dialog", lambda d: d.accept())
    w.page.get_by_test_id("activate").click()
    assert "policy.changed" in done_action(w, "Activate this policy")
    w.page.get_by_test_id("policy-active").filter(has_text="version 2 (lua)").wait_for()
    activations = [c for c in stub.calls if c[1] == "/v2/admin/policy:activate"]
    assert "function decide" in activations[-1][2]["source"]

    w.page.once("dialog", lambda d: d.accept())
    w.page.get_by_test_id("rollback").first.click()
    w.page.get_by_test_id("policy-active").filter(has_text="version 3 (builtin)").wait_for()
    assert [c for c in stub.calls if c[1] == "/v2/admin/policy:activate"][-1][2] == {"version": 1}
    w.screenshot("contract-policy-activated")
    no_errors(w)


def test_policy_is_read_only_in_platform_mode(stub_ui):
    stub, w = stub_ui(mode="platform", view="policy")
    w.page.get_by_test_id("policy-readonly").wait_for()
    assert "platform mode" in w.page.get_by_test_id("policy-readonly").inner_text()
    assert w.page.get_by_test_id("activate").is_disabled()
    assert w.page.get_by_test_id("lua-editor").get_attribute("contenteditable") == "false"
    assert w.page.get_by_test_id("mode").inner_text() == "platform"
    # Dry-run still works (it changes nothing).
    w.page.get_by_test_id("dry-run").click()
    w.page.get_by_test_id("dry-builtin").wait_for()
    w.screenshot("contract-policy-platform")
    no_errors(w)


def test_playground_streams(stub_ui):
    stub, w = stub_ui(view="playground")
    w.page.get_by_test_id("pg-model").locator("option").first.wait_for(state="attached")
    w.page.get_by_test_id("pg-model").select_option("tiny")
    w.page.get_by_test_id("pg-input").fill("hi there")
    w.page.get_by_test_id("pg-send").click()
    # Tokens arrive one by one while the stream is open.
    w.page.get_by_test_id("pg-reply").filter(has_text="Hello from").wait_for()
    w.page.get_by_test_id("pg-meta").filter(has_text="5 completion tokens").wait_for()
    assert "Hello from the stub." in w.page.get_by_test_id("pg-log").inner_text()
    chat = [c for c in stub.calls if c[1] == "/v1/chat/completions"][-1][2]
    assert chat["stream"] is True and chat["messages"] == [{"role": "user", "content": "hi there"}]
    assert "job-chat1" in w.page.get_by_test_id("pg-meta").inner_text()
    w.screenshot("contract-playground")
    no_errors(w)


def test_fact_stream_resumes_after_a_drop(stub_ui):
    stub, w = stub_ui(view="events")
    feed = w.page.get_by_test_id("feed")
    feed.locator('[data-code="job.dispatched"]').wait_for()
    last = stub.facts[-1]["id"]
    stub.drop_streams()
    stub.publish("pool.lost", "heartbeat timeout", level="warning", pool_id="edge")
    feed.locator('[data-code="pool.lost"]').wait_for()
    w.page.locator('[data-testid="stream-state"]:has-text("live")').wait_for()
    # It resumed after the last fact it had: nothing missed, nothing twice.
    assert stub.resumes[-1] == str(last), stub.resumes
    ids = [int(r.get_attribute("data-fact")) for r in feed.locator("tbody tr[data-fact]").all()]
    assert len(ids) == len(set(ids)) and max(ids) == last + 1
    assert w.page_errors == []


def test_playground_stop_keeps_the_partial_reply(stub_ui):
    stub, w = stub_ui(view="playground")
    w.page.get_by_test_id("pg-model").locator('option[value="tiny"]').wait_for(state="attached")
    w.page.locator('input[type="number"]').nth(1).fill("999")  # max tokens: a long stub reply
    w.page.get_by_test_id("pg-input").fill("go on")
    w.page.get_by_test_id("pg-send").click()
    w.page.get_by_test_id("pg-reply").filter(has_text="More").wait_for()
    w.page.get_by_role("button", name="Stop").click()
    w.page.get_by_test_id("pg-reply").wait_for(state="detached")
    assert "Hello from the stub." in w.page.get_by_test_id("pg-log").inner_text()
    assert w.page.get_by_test_id("pg-error").count() == 0
    assert w.page_errors == []

"""The operator's two levers on placement, driven through the UI in a real browser on a
real `llama-orch up` (orchestrator, pool manager, gateway; `sim` workers as processes).

The pool declares two simulated devices, sim-0 (8 TiB) and sim-1 (9 TiB), and every
`sim` model here needs 5 TiB on one device: so each device holds one worker, and the
host's RAM (the pool's `cpu` device) holds none. The built-in policy starts a worker on
the device with the most free memory and, when none has room, stops the least recently
used idle worker that is not pinned.

a. A pin protects from eviction. alpha runs (sim-1), is pinned there from the Models
   view, bravo runs (sim-0); charlie then needs a device: alpha is the least recently
   used idle worker but pinned, so bravo is evicted, and alpha stays, pinned, all along.
   The control in the same run: once unpinned, bravo's next job evicts alpha, and only
   alpha (charlie keeps its worker).
b. A policy changes placement. Under the built-in, xray starts on sim-1 (most free).
   The policy editor then activates examples/policies/pin_gpu0.lua, pasted with xray as
   its model and "simulated" as its device kind (sim-0 is the pool's first such
   device): xray's next worker starts on sim-0. Rolled back to the built-in at the end.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.stack import Stack, sim_config
from tests.ui.test_ui_stack import (  # noqa: F401 (ui is a fixture)
    ACTIVATE,
    CLUSTER,
    FACTS,
    PIN,
    POLICY,
    VERSIONS,
    needs,
    needs_rpc,
    no_page_errors,
    ui,
)

pytestmark = pytest.mark.e2e

TIB = 1 << 40
DEVICES = {"sim-0": 8 * TIB, "sim-1": 9 * TIB}
MODELS = {name: (1, 5 * TIB) for name in ("alpha", "bravo", "charlie", "xray")}
UNPIN = ("DELETE", "/v2/admin/pins/alpha")
VALIDATE = ("POST", "/v2/admin/policy:validate")
STOP_WORKER = ("DELETE", "/v2/admin/workers/w-1")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(tmp_path):
    """A fresh stack per test: each starts from empty devices."""
    s = Stack(tmp_path, extra_config=sim_config(tmp_path, DEVICES, MODELS)).start()
    yield s
    s.stop()


# ---- the API, for submitting work and waiting on it (what the UI shows is asserted) --------

def get(stack: Stack, path: str) -> dict:
    with urllib.request.urlopen(stack.base_url + path, timeout=30) as resp:
        return json.loads(resp.read())


def run_job(stack: Stack, model: str, seed: int, timeout: float = 90) -> dict:
    """Submit one job and wait for it to finish; it must succeed."""
    req = urllib.request.Request(
        stack.base_url + "/v2/tasks", method="POST",
        data=json.dumps({"model": model, "prompt": "The Fox and the Crow.", "max_tokens": 4,
                         "seed": seed}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        job = json.loads(resp.read())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(stack, f"/v2/tasks/{job['id']}")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job
            return job
        time.sleep(0.2)
    pytest.fail(f"{model}'s job {job['id']} never finished:\n{stack.logs()[-3000:]}")


def model_ref(stack: Stack, name: str) -> str:
    (m,) = [m for m in get(stack, "/v2/cluster")["models"] if m["id"] == name]
    return m["ref"]


# ---- what the browser shows -------------------------------------------------------------------

def worker_of(w, model: str):
    """The cluster view's worker entry for `model` (one device each here): (id, device)."""
    entry = w.page.locator("[data-device] [data-worker]").filter(
        has_text=re.compile(rf"\b{model}\b")).first
    entry.wait_for()
    return (entry.get_attribute("data-worker"),
            entry.evaluate("e => e.closest('[data-device]').dataset.device"))


def on_device(w, device: str, worker_id: str):
    return w.page.locator(f'[data-device="{device}"] [data-worker="{worker_id}"]')


def feed_rows(w, model: str, code: str):
    """The Events view's rows of `code` for the model (filtered by its ref's name)."""
    w.page.get_by_test_id("filter-model").fill(model)
    return w.page.get_by_test_id("feed").locator(f'[data-code="{code}"]')


def go(w, view: str) -> None:
    w.page.get_by_test_id(f"nav-{view}").click()
    w.page.get_by_test_id(f"view-{view}").wait_for()


# ---- a. a pin survives memory pressure -------------------------------------------------------

def test_a_pinned_model_survives_memory_pressure_and_unpinned_it_is_evicted(ui):
    needs(CLUSTER, FACTS, PIN, UNPIN)
    stack, w = ui("cluster")
    page = w.page
    page.locator('[data-testid="stream-state"]:has-text("live")').wait_for()
    pool = get(stack, "/v2/cluster")["pools"][0]["pool_id"]

    run_job(stack, "alpha", seed=1)
    alpha, alpha_dev = worker_of(w, "alpha")
    assert alpha_dev in DEVICES, alpha_dev  # never the host's RAM

    # Pin alpha to its device from the Models view, ticking that device only.
    go(w, "models")
    row = page.locator(f'[data-model="alpha"] tr[data-pool="{pool}"]')
    row.locator(f'label.check[title="{alpha_dev}"] input').check()
    row.get_by_test_id("pin").click()
    fact = page.get_by_test_id("action").filter(has_text="Pin alpha").first \
        .get_by_test_id("action-fact")
    fact.wait_for()
    assert "model.pinned" in fact.inner_text()
    row.get_by_test_id("pinned").wait_for()
    w.screenshot("stack-pin-pinned")

    go(w, "cluster")
    badge = page.locator(f'[data-device="{alpha_dev}"] [data-testid="pin-badge"]')
    badge.filter(has_text="alpha").wait_for()
    run_job(stack, "bravo", seed=2)
    bravo, bravo_dev = worker_of(w, "bravo")
    assert bravo_dev in DEVICES and bravo_dev != alpha_dev, (alpha_dev, bravo_dev)

    # charlie needs a device: alpha is the least recently used idle worker, but pinned.
    # While charlie's job is on its way, alpha stays on its device, pinned, throughout.
    seen_alpha = []

    def alpha_still_pinned_there() -> None:
        seen_alpha.append(on_device(w, alpha_dev, alpha).count() == 1
                          and badge.filter(has_text="alpha").count() == 1)

    charlie_job = {}
    t = threading.Thread(target=lambda: charlie_job.update(run_job(stack, "charlie", seed=3)))
    t.start()
    while t.is_alive():
        alpha_still_pinned_there()
        page.wait_for_timeout(100)
    t.join()
    assert charlie_job.get("status") == "succeeded", charlie_job
    charlie, charlie_dev = worker_of(w, "charlie")
    assert charlie_dev == bravo_dev  # it took the evicted worker's device
    on_device(w, bravo_dev, bravo).wait_for(state="detached")
    alpha_still_pinned_there()
    # The device's memory bar comes to show charlie's 5 TiB (from the pool's inventory:
    # a pool.heartbeat fact, or the snapshot re-read after worker.ready).
    page.locator(f'[data-device="{charlie_dev}"]').filter(
        has_text=re.compile(r"5 TiB / \d+ TiB")).wait_for()
    assert seen_alpha and all(seen_alpha), seen_alpha
    w.screenshot("stack-pin-pressure-cluster")

    go(w, "events")
    feed_rows(w, "alpha", "model.pinned").first.wait_for()
    feed_rows(w, "bravo", "worker.stopped").first.wait_for()
    assert feed_rows(w, "alpha", "worker.stopped").count() == 0
    assert feed_rows(w, "charlie", "worker.ready").count() >= 1
    w.screenshot("stack-pin-pressure-events")

    # The control: unpinned, alpha (still the least recently used) is what bravo's next
    # job evicts, and only alpha: charlie keeps its worker. One eviction makes room, as
    # the scheduler counts a stopping worker's memory as on its way and an exited one's
    # as free until the pool's next heartbeat (registry.Exited); before that, the
    # stale inventory could make it evict charlie too.
    go(w, "models")
    row.get_by_test_id("unpin").click()
    row.get_by_test_id("pinned").wait_for(state="detached")
    go(w, "cluster")
    run_job(stack, "bravo", seed=4)
    on_device(w, alpha_dev, alpha).wait_for(state="detached")
    bravo_again, bravo_again_dev = worker_of(w, "bravo")
    assert bravo_again != bravo and bravo_again_dev == alpha_dev, (bravo_again, bravo_again_dev)
    assert on_device(w, charlie_dev, charlie).count() == 1
    assert [x["worker_id"] for p in get(stack, "/v2/cluster")["pools"] for x in p["workers"]
            if x["worker_id"] == charlie] == [charlie]
    go(w, "events")
    feed_rows(w, "alpha", "model.unpinned").first.wait_for()
    feed_rows(w, "alpha", "worker.stopped").first.wait_for()
    # Once the feed shows bravo's second worker ready, it has every fact up to then; a
    # second eviction would have come before it (bravo's worker starts once there is room).
    feed_rows(w, "bravo", "worker.ready").nth(1).wait_for()
    assert feed_rows(w, "charlie", "worker.stopped").count() == 0
    assert feed_rows(w, "bravo", "worker.stopped").count() == 1
    w.screenshot("stack-pin-unpinned-evicted")
    no_page_errors(w)


# ---- b. activating a policy changes placement -------------------------------------------------

def pin_gpu0_policy(model: str) -> str:
    """examples/policies/pin_gpu0.lua for `model`, with simulated devices as its GPUs."""
    source = (ROOT / "examples" / "policies" / "pin_gpu0.lua").read_text()
    example = 'local MODEL = "hf:org/model-x@main::file=model-x.gguf"'
    assert source.count(example) == 1 and source.count('d.kind == "gpu"') == 1
    return (source.replace(example, f"local MODEL = {json.dumps(model)}")
            .replace('d.kind == "gpu"', 'd.kind == "simulated"'))


def activated(w, label: str) -> str:
    fact = w.page.get_by_test_id("action").filter(has_text=label).first \
        .get_by_test_id("action-fact")
    fact.wait_for()
    return fact.inner_text()


def test_activating_a_policy_changes_where_a_worker_starts(ui, request):
    needs(CLUSTER, FACTS, POLICY, VERSIONS, VALIDATE, ACTIVATE, STOP_WORKER)
    needs_rpc(request.getfixturevalue("stack"), POLICY, VERSIONS)
    stack, w = ui("cluster")
    page = w.page
    page.locator('[data-testid="stream-state"]:has-text("live")').wait_for()
    xray_ref = model_ref(stack, "xray")

    # The control: the built-in starts xray on the device with the most free memory.
    run_job(stack, "xray", seed=1)
    builtin, builtin_dev = worker_of(w, "xray")
    assert builtin_dev == "sim-1"
    w.screenshot("stack-policy-builtin-placement")
    # Stop it from the cluster view, so the next job needs a new worker.
    page.locator(f'[data-worker="{builtin}"] button:has-text("Stop")').click()
    on_device(w, builtin_dev, builtin).wait_for(state="detached")

    # Paste the policy into the editor, validate, activate.
    go(w, "policy")
    page.get_by_test_id("policy-active").filter(has_text="builtin").wait_for()
    editor = page.get_by_test_id("lua-editor")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(pin_gpu0_policy(xray_ref))
    assert "keeping" in editor.inner_text()
    page.get_by_test_id("validate").click()
    page.get_by_test_id("valid").wait_for()
    page.once("dialog", lambda d: d.accept())
    page.get_by_test_id("activate").click()
    assert "policy.changed" in activated(w, "Activate this policy")
    page.get_by_test_id("policy-active").filter(has_text="lua").wait_for()
    w.screenshot("stack-policy-activated")

    # The same job now starts xray's worker on sim-0, where the policy put it.
    go(w, "cluster")
    run_job(stack, "xray", seed=2)
    placed, placed_dev = worker_of(w, "xray")
    assert placed != builtin
    assert placed_dev == "sim-0" != builtin_dev
    w.screenshot("stack-policy-placement")
    go(w, "events")
    page.get_by_test_id("feed").locator('[data-code="policy.changed"]').first.wait_for()
    started = feed_rows(w, "xray", "decision.taken").filter(has_text="keeping")
    started.first.wait_for()  # the policy's reason, not the built-in's
    w.screenshot("stack-policy-events")

    # Roll back to the built-in.
    go(w, "policy")
    page.once("dialog", lambda d: d.accept())
    page.get_by_test_id("activate-builtin").click()
    assert "policy.changed" in activated(w, "Use the built-in policy")
    page.get_by_test_id("policy-active").filter(has_text="builtin").wait_for()
    no_page_errors(w)

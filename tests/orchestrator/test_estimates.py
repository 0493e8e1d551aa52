import pytest

from orchestrator.estimates import Estimates, ModelEstimate


def test_a_model_never_observed_has_no_estimate():
    e = Estimates()
    assert e.get("m1") is None and dict(e.snapshot()) == {}


@pytest.mark.parametrize("starts,jobs,expected", [
    pytest.param([20.0], [], None, id="no-estimate-before-a-job-finished"),
    pytest.param([], [(100, 4.0)], ModelEstimate(30.0, 4.0, 25.0), id="start-default-until-observed"),
    pytest.param([10.0, 20.0], [(10, 5.0)], ModelEstimate(15.0, 5.0, 2.0), id="ema-of-starts"),
    pytest.param([], [(100, 2.0), (0, 4.0)], ModelEstimate(30.0, 3.0, 50.0), id="no-tokens-no-rate-sample"),
    pytest.param([-1.0], [(10, 0.0)], None, id="nonsense-samples-ignored"),
])
def test_moving_averages(starts, jobs, expected):
    e = Estimates(alpha=0.5, default_start_s=30.0)
    for s in starts:
        e.worker_started("m1", s)
    for tokens, s in jobs:
        e.job_finished("m1", "w1", tokens, s)
    assert e.get("m1") == expected


def test_snapshot_is_frozen_and_rebuilt_only_after_facts():
    e = Estimates()
    e.job_finished("m1", "w1", 10, 5.0)
    snap = e.snapshot()
    assert e.snapshot() is snap
    with pytest.raises(TypeError):
        snap["m2"] = ModelEstimate(1.0, 1.0)
    e.job_finished("m2", "w9", 10, 1.0)
    assert e.snapshot() is not snap and list(e.snapshot()) == ["m1", "m2"] and "m2" not in snap


def test_per_worker_rate_and_forgetting():
    e = Estimates(alpha=1.0)
    e.job_finished("m1", "w1", 100, 2.0)
    e.job_finished("m1", "w2", 10, 1.0)
    assert e.worker_tokens_per_s("w1") == 50.0 and e.get("m1").tokens_per_s == 10.0
    e.worker_gone("w1"), e.worker_gone("w1")
    assert e.worker_tokens_per_s("w1") == 0.0


def test_alpha_must_be_a_fraction():
    with pytest.raises(ValueError):
        Estimates(alpha=0.0)

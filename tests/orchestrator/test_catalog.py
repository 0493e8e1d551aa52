"""Per-model devices and memory: from the config to the catalog, the queue and the API."""

import shutil

import pytest

from common.config import Config, ModelConfig
from llama_orch.v1 import common_pb2 as C
from orchestrator.catalog import TINY_PATH, Catalog
from orchestrator.client_api import ClientServicer
from orchestrator.core import Orchestrator

GIB = 1 << 30
RESERVE = 64 * 1024 * 1024  # the KV/activation reserve on top of 1.5 x the weights


def model_dir(tmp_path, name="m", weights=0):
    path = tmp_path / name
    path.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(TINY_PATH / f, path / f)
    if weights:
        (path / "model.safetensors").write_bytes(b"\0" * weights)
    return path


@pytest.mark.parametrize("engine, devices, memory, weights, estimate, options", [
    pytest.param("hf", 1, 0, 1000, 1500 + RESERVE, {}, id="estimated-from-the-weights"),
    pytest.param("hf", 2, 3 * GIB, 1000, 3 * GIB, {}, id="configured-memory-wins"),
    pytest.param("sim", 1, 0, 0, RESERVE, {}, id="sim-without-memory-keeps-its-own-setting"),
    pytest.param("sim", 4, 5 * GIB, 1000, 5 * GIB, {"memory_bytes": str(5 * GIB)},
                 id="sim-is-told-the-configured-memory"),
])
def test_devices_and_memory_come_from_the_model_config(tmp_path, engine, devices, memory,
                                                        weights, estimate, options):
    path = model_dir(tmp_path, weights=weights)
    m = Catalog().add("m", ModelConfig(ref=f"file:{path}", engine=engine, devices=devices,
                                       memory_bytes=memory))
    assert m.device_count == devices
    assert m.memory_estimate_bytes == estimate
    assert m.engine_options == options


async def test_a_queued_job_and_the_model_list_carry_the_models_device_count(tmp_path):
    cfg = Config()
    cfg.models["tp"] = ModelConfig(ref=f"file:{model_dir(tmp_path, 'tp')}", engine="sim",
                                   devices=2, memory_bytes=3 * GIB)
    orch = Orchestrator(cfg)  # not started: nothing is dispatched, the job stays queued
    job, _ = await orch.submit(C.JobSpec(model="tp", prompt="the fox"))
    [head] = orch.index.heads(job.model_ref, 1, now=job.created_at + 1)
    assert (head.device_count, head.memory_estimate, head.engine) == (2, 3 * GIB, "sim")
    info = ClientServicer(orch)._model_info(orch.catalog.resolve("tp"))
    assert (info.device_count, info.memory_estimate_bytes) == (2, 3 * GIB)

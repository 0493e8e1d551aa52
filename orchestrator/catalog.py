"""The model catalog: aliases -> canonical refs, and each model's prompt rules.

Only the orchestrator resolves aliases (pool managers see canonical refs). The catalog
also renders chat prompts and counts tokens, so admission can check the context
length before anything is queued; it loads only `tokenizers` and a Jinja template,
never the weights. For `hf:` models it fetches just those files (PROMPT_FILES) into its
own cache at start (`fetch_prompting`); until then their jobs are refused with
MODEL_UNSERVABLE, and the weights are fetched by the pool managers that run them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from common.config import ModelConfig
from common import model_ref
from common.errors import InvalidInput, OrchError

TINY_PATH = Path(__file__).resolve().parents[1] / "models" / "tiny"
# What admission needs of a model (chat_template.jinja is optional).
PROMPT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@dataclass(frozen=True)
class CatalogModel:
    name: str
    ref: str
    engine: str
    context_length: int
    path: Path | None
    size_bytes: int = 0
    aliases: tuple[str, ...] = ()
    created: int = 0
    device_count: int = 1  # tensor parallelism: devices in one worker's mask
    memory_bytes: int = 0  # configured memory per device; 0 = estimate from the weights

    @property
    def memory_estimate_bytes(self) -> int:
        """Bytes a worker needs on EVERY device of its mask: the configured amount, else
        the weights plus a KV/activation reserve (refined by what workers report)."""
        if self.memory_bytes > 0:
            return self.memory_bytes
        return int(self.size_bytes * 1.5) + 64 * 1024 * 1024

    @property
    def engine_options(self) -> dict[str, str]:
        """Options every worker of the model starts with. A sim worker "uses" whatever it
        is told, not its folder's weights: a configured memory_bytes is passed on, so the
        bytes it reports match what placement reserved."""
        if self.engine == "sim" and self.memory_bytes > 0:
            return {"memory_bytes": str(self.memory_bytes)}
        return {}


@dataclass
class _Prompting:
    tokenizer: Tokenizer
    template: object | None
    bos: str = ""
    eos: str = ""


@dataclass
class Catalog:
    models: dict[str, CatalogModel] = field(default_factory=dict)
    _by_ref: dict[str, CatalogModel] = field(default_factory=dict)
    _prompting: dict[str, _Prompting] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _configs: dict[str, ModelConfig] = field(default_factory=dict)

    @classmethod
    def from_config(cls, configured: dict[str, ModelConfig]) -> "Catalog":
        cat = cls()
        if TINY_PATH.joinpath("config.json").exists():
            cat.add("tiny", ModelConfig(ref=f"file:{TINY_PATH}", engine="hf"))
        for name, mc in configured.items():
            cat.add(name, mc)
        return cat

    def add(self, name: str, mc: ModelConfig, path: Path | None = None) -> CatalogModel:
        """Add a model; `path` is where an hf: model's prompt files were fetched."""
        ref = model_ref.parse(mc.ref)  # INVALID_MODEL_REF for anything malformed
        if ref.kind == "file":
            path = Path(ref.path)
        ctx = mc.context_length
        size = 0
        created = 0
        if path is not None:
            if not path.is_absolute():
                raise InvalidInput("INVALID_MODEL_REF", f"{mc.ref}: file refs need an absolute path")
            try:
                cfg = json.loads((path / "config.json").read_text())
            except (OSError, ValueError) as exc:
                raise InvalidInput("INVALID_MODEL_REF", f"{mc.ref}: no readable config.json ({exc})") from None
            ctx = ctx or int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048)
            weights = [*path.glob("*.safetensors"), *path.glob("*.bin")]
            size = sum(p.stat().st_size for p in weights)
            created = int(max((p.stat().st_mtime for p in weights), default=0))
        model = CatalogModel(name=name, ref=mc.ref, engine=mc.engine, context_length=ctx or 2048,
                             path=path, size_bytes=size, created=created,
                             device_count=mc.devices, memory_bytes=mc.memory_bytes)
        self.models[name] = model
        self._by_ref[mc.ref] = model
        self._configs[name] = mc
        return model

    async def fetch_prompting(self, cache) -> list[tuple[str, OrchError]]:
        """Fetch the prompt files of every hf: model (`cache`: a pool_manager.cache.ModelCache
        in the orchestrator's data dir); returns the models that failed, with why."""
        failed = []
        for name, model in list(self.models.items()):
            ref = model_ref.parse(model.ref)
            if ref.kind != "hf" or model.path is not None or ref.file:
                continue
            try:
                folder = None
                for file in PROMPT_FILES:
                    try:
                        folder = (await cache.ensure(f"{model.ref}::file={file}")).path
                    except OrchError as err:
                        if not (file == "chat_template.jinja" and err.code == "MODEL_NOT_FOUND"):
                            raise
                self.add(name, self._configs[name], path=folder)
            except OrchError as err:
                failed.append((name, err))
        return failed

    def resolve(self, name: str) -> CatalogModel:
        model = self.models.get(name) or self._by_ref.get(name)
        if model is None:
            raise InvalidInput("MODEL_NOT_FOUND", f"The model '{name}' does not exist",
                               param="model")
        return model

    def by_ref(self, ref: str) -> CatalogModel | None:
        return self._by_ref.get(ref)

    # ---- prompts -------------------------------------------------------------------

    def _prompting_for(self, model: CatalogModel) -> _Prompting:
        with self._lock:
            p = self._prompting.get(model.ref)
            if p is not None:
                return p
            if model.path is None:
                raise OrchError("MODEL_UNSERVABLE", f"{model.ref}: its tokenizer is not fetched "
                                "(yet): see the orchestrator's model.fetch facts")
            tok = Tokenizer.from_file(str(model.path / "tokenizer.json"))
            tcfg = _read_json(model.path / "tokenizer_config.json")
            source = tcfg.get("chat_template")
            jinja_file = model.path / "chat_template.jinja"
            if source is None and jinja_file.exists():
                source = jinja_file.read_text()
            template = None
            if isinstance(source, str):
                env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
                env.globals["raise_exception"] = _raise_template_error
                template = env.from_string(source)
            p = _Prompting(tok, template, _token_text(tcfg.get("bos_token")),
                           _token_text(tcfg.get("eos_token")))
            self._prompting[model.ref] = p
            return p

    def render_chat(self, model: CatalogModel, messages: list[dict[str, str]]) -> str:
        p = self._prompting_for(model)
        if p.template is None:
            # No template: a plain transcript, so models without one still work.
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        try:
            return p.template.render(messages=messages, add_generation_prompt=True,
                                     bos_token=p.bos, eos_token=p.eos)
        except _TemplateError as exc:
            raise InvalidInput("INVALID_ARGUMENT", str(exc), param="messages") from None

    def encode(self, model: CatalogModel, text: str, *, special: bool) -> list[int]:
        return self._prompting_for(model).tokenizer.encode(text, add_special_tokens=special).ids


class _TemplateError(Exception):
    pass


def _raise_template_error(message: str) -> None:
    raise _TemplateError(message)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _token_text(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""

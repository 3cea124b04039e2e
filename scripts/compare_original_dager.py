"""Side by side with the original DAGER (Petrov et al., NeurIPS 2024): the authors' public code run
on the very attacker views this suite's DAGER attacks, both scored with the harness's ROUGE-1.

Why a script and not an attack: the authors' code is not ours to ship. Nothing of it is in this
repository; ``--dager-src`` points at a checkout fetched separately, and its modules are imported
from there, unmodified. It was written against transformers 4.45 (its partial Llama forward calls
``LlamaModel._update_causal_mask`` and reads a decoder layer's output as a tuple, both gone in the
transformers 5 this suite uses), so it runs in a child process with ``--compat-site`` first on
``sys.path``, a folder holding those versions, made once with::

    python -m pip install --target /tmp/dager_site --no-deps transformers==4.45.1 \\
        tokenizers==0.20.0 huggingface-hub==0.25.1 peft==0.13.0 accelerate==0.34.2

The child never imports this suite, and the suite never imports the authors' code.

Steps (``--step all`` runs them in order):

- ``save``: simulate the ``paper`` scenario (SmolLM2-135M, plain LoRA, rank 256 on q_proj and
  v_proj) with a round-2 gradient observation, run this suite's DAGER through the harness on every
  probe case (``run_attack``: its scoring, its timing), and save what the authors' code needs: the
  view's public model (base plus the start the server replays; the model the gradient was computed
  at), the client's starting q_proj factors, each case's observed q_proj gradients, the batch size.
- ``theirs``: in the child, build the authors' ``ModelWrapper`` as ``scripts/lora.sh`` does (LoRA
  r 256 on q_proj, a trained adapter through ``--finetuned_path``, pad left) around the saved model,
  and run their ``reconstruct`` with ``compute_grads`` replaced by the saved view's gradients, under
  each threshold configuration asked for (``CONFIGS``: lora.sh's 0.05 / 0.05 with rank tolerance
  5e-9, their parser's defaults, or the defaults with lora.sh's rank tolerance), each case under a
  time limit. Their reconstruction is read before their own evaluation step, which matches each
  reference to its best prediction (with repeats). Results accumulate in ``theirs.json`` across
  runs of different configurations.
- ``score``: score their texts exactly as the harness scores ours (template removed, one-to-one
  ROUGE matching, ``benchmark.running.metrics``) and print the table.

What had to be adapted, and why (the report repeats this):

- The authors' wrapper accepts only a fixed list of hub names: it is given
  ``meta-llama/Meta-Llama-3.1-8B`` (SmolLM2 is a Llama) with its model and tokenizer loaders
  replaced by the saved SmolLM2, so every Llama-specific branch of theirs runs as written.
- Their adapter is on q_proj only; ours is on q_proj and v_proj. They get the q_proj gradients only;
  v_proj's start delta is merged into the model (as is q_proj's), and their adapter is loaded with
  the start's A and B = 0, so the forward is exactly the view's public model.
- Their Llama decoder starts every sequence from the tokenizer's BOS; the suite's inputs carry no
  BOS and start with the public template's first token, so that token plays BOS's part
  (``start_token``).
- Their ``datasets`` import (a data loader and the ROUGE metric of ``datasets`` 2.x, neither
  called here) is stubbed; their math is not touched.
- ``reconstruct`` still receives the true prompts, as in their code, where they feed only
  diagnostics (printed token recall) and that final matching step, which is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

HUB_NAME = "meta-llama/Meta-Llama-3.1-8B"  # a Llama name their wrapper accepts; the weights are SmolLM2's
ARCH_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
             "tie_word_embeddings", "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id", "pad_token_id")
LAYER = re.compile(r"layers\.(\d+)\.")


# Their thresholds: ``lora_sh`` as their LoRA experiment sets them (scripts/lora.sh), ``defaults``
# their parser's defaults (l1 1e-5, l2 1e-3, numpy's relative rank tolerance), as their full
# fine-tuning Llama experiment (scripts/llama.sh) leaves them, and ``lora_tol`` the parser's span
# thresholds with lora.sh's absolute rank tolerance (5e-9).
CONFIGS = {"lora_sh": ["--l1_span_thresh", "0.05", "--l2_span_thresh", "0.05", "--rank_tol", "5e-9"], "defaults": [],
           "lora_tol": ["--rank_tol", "5e-9"]}


def lora_argv(batch_size: int, finetuned: Path, config: str = "lora_sh") -> list[str]:
    """The arguments of the authors' ``scripts/lora.sh`` (their LoRA experiment: r 256 on q_proj, a
    trained adapter, pad left), on CPU, with ``config``'s thresholds; the dataset name is required by
    their parser and unused (the batch comes from the saved view)."""
    return ["--dataset", "sst2", "--split", "val", "--n_inputs", "1", "--batch_size", str(batch_size),
            "--l1_filter", "all", "--l2_filter", "non-overlap", "--model_path", HUB_NAME, "--device", "cpu",
            "--device_grad", "cpu", "--task", "seq_class", *CONFIGS[config], "--train_method", "lora",
            "--lora_r", "256", "--finetuned_path", str(finetuned), "--pad", "left"]


# ---- step 1: the suite's views and its DAGER --------------------------------------------------


def _q_proj(modules: dict[str, Any]) -> dict[int, str]:
    """Layer index -> module name of every adapted q_proj."""
    return {int(LAYER.search(n).group(1)): n for n in modules if n.endswith("q_proj")}


def save(out: Path, sizes: list[int], batches: int, seed: int) -> None:
    import torch
    from safetensors.torch import save_model

    from benchmark.config import ComponentSpec
    from benchmark.contract.plugins import ENGINES
    from benchmark.running.catalog import resolve_scenario
    from benchmark.running.execution import run_attack
    from benchmark.running.planning import defense_stack

    out.mkdir(parents=True, exist_ok=True)
    scenario = resolve_scenario("paper", {"name": "paper_grad_r2", "probe": {"batches": batches},
                                          "threat": {"observation": "grad", "round": 2, "batch_sizes": sizes}})
    defense = defense_stack(ComponentSpec("plain_lora", "plain_lora")).build()
    t0 = time.perf_counter()
    sim = ENGINES.get(scenario.engine)(scenario, defense, seed, "cpu", lambda msg: print(f"  sim: {msg}", flush=True))
    print(f"simulation: {time.perf_counter() - t0:.0f} s", flush=True)
    probe = sim.probe
    first = probe.first.view
    layers = _q_proj(first.modules)
    model, tok = first.model, first.tokenizer
    save_model(model, str(out / "model.safetensors"))
    tok.save_pretrained(out / "tokenizer")
    cfg = model.config
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(f"rope {rope} is not the default Llama rope: the authors' 4.45 config would differ")
    arch = {k: getattr(cfg, k, None) for k in ARCH_KEYS}
    arch["rope_theta"] = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    head = probe.template.partition("{text}")[0]
    start_id = tok(head, add_special_tokens=False).input_ids[0]
    # a reference point for the child: layer-1 inputs of one prompt, to show both stacks compute the same model
    check_ids = tok(probe.template.format(text=probe.first.references[0]), add_special_tokens=False).input_ids
    with torch.no_grad():
        hidden = model(torch.tensor([check_ids]), output_hidden_states=True).hidden_states[1]
        check_x1 = model.model.layers[1].input_layernorm(hidden)[0]
    prev = {i: (first.prev[n].A.cpu(), first.prev[n].B.cpu()) for i, n in layers.items()}
    torch.save({"prev": prev, "check_ids": check_ids, "check_x1": check_x1}, out / "start.pt")
    cases = []
    for (size, index), case in probe.cases.items():
        view = case.view
        for n in layers.values():  # every view's public model is the one saved (same start for all cases)
            w = view.model.get_submodule(n).weight
            if not torch.equal(w, model.get_submodule(n).weight):
                raise SystemExit(f"case {size}#{index}: its public model differs from the first case's at {n}")
        grads = {i: (view.modules[n].A.cpu(), view.modules[n].B.cpu()) for i, n in layers.items()}
        name = f"case_b{size}_{index}.pt"
        torch.save(grads, out / name)
        print(f"our DAGER on batch {size}#{index} ...", flush=True)
        row = run_attack(ComponentSpec("dager", "dager"), "naive", sim, (size, index))
        cases.append({"size": size, "index": index, "file": name, "references": case.references,
                      "prompts": [probe.template.format(text=r) for r in case.references],
                      "kind": view.kind, "start_known": view.start_known,
                      "ours": {k: row.get(k) for k in ("status", "rouge1", "token_recall", "exact_match", "attack_s",
                                                       "rank_l0", "attack_note")}})
        print(f"  ours: rouge1={row.get('rouge1')} in {row.get('attack_s', 0):.1f} s", flush=True)
    meta = {"arch": arch, "template": probe.template, "label_names": list(probe.label_names),
            "start_token_id": start_id, "eos_token_id": tok.eos_token_id,
            "clean_up_tokenization_spaces": bool(getattr(tok, "clean_up_tokenization_spaces", False)), "seed": seed, "cases": cases,
            "scenario": "paper --set threat.observation=grad threat.round=2 "
                        f"threat.batch_sizes={sizes} probe.batches={batches}",
            "q_proj_layers": len(layers), "lora_scale": first.prev[layers[0]].scale}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


# ---- step 2: the authors' DAGER, in a child process ----------------------------------------------


class _Stub(types.ModuleType):
    """Stands in for ``datasets`` 2.x: its loaders are never called here (the views are the data)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # module protocol (``__file__``, ``__path__``): absent, as on a bare module
            raise AttributeError(name)

        def unavailable(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError(f"datasets.{name} is stubbed in this comparison")

        return unavailable


class _Recorder:
    """Records the text lists the wrapped tokenizer is called on (the authors' last step tokenizes
    ``[reference] + predictions``: that list holds their raw reconstruction)."""

    def __init__(self, tokenizer: Any) -> None:
        self.calls: list[list[str]] = []
        recorder, base = self, type(tokenizer)

        def call(tok: Any, text: Any = None, *a: Any, **k: Any) -> Any:
            recorder.calls.append(list(text) if isinstance(text, list | tuple) else [text])
            return base.__call__(tok, text, *a, **k)

        tokenizer.__class__ = type(f"Recording{base.__name__}", (base,), {"__call__": call})


def _load_model(out: Path, arch: dict[str, Any]) -> Any:
    from safetensors.torch import load_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**arch, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    load_model(model, str(out / "model.safetensors"))
    return model.eval()


def _start_adapter(model: Any, prev: dict[int, tuple[Any, Any]], path: Path) -> None:
    """The ``--finetuned_path`` file their wrapper loads: their q_proj adapter holding the client's
    start A and a zero B, since the start's delta is already merged into the model."""
    import copy

    import peft
    import torch

    lora = peft.LoraModel(copy.deepcopy(model), peft.LoraConfig(r=256, target_modules=["q_proj"]), "default")
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                A, _B = prev[int(LAYER.search(name).group(1))]
                p.copy_(A if "lora_A" in name else torch.zeros_like(p))
    torch.save(lora.state_dict(), path)


def theirs(out: Path, dager_src: Path, configs: dict[str, int]) -> None:
    """Their attack on every saved case under each of ``configs`` (name -> seconds allowed per case)."""
    os.environ.setdefault("HF_TOKEN", "")  # their wrapper reads it; nothing is downloaded
    sys.path.insert(0, str(dager_src))
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast

    meta = json.loads((out / "meta.json").read_text())
    start = torch.load(out / "start.pt", weights_only=False)
    # the suite's tokenizer file; its config names a transformers-5 class, so the fast class is named here
    tokenizer = PreTrainedTokenizerFast.from_pretrained(
        out / "tokenizer", clean_up_tokenization_spaces=meta.get("clean_up_tokenization_spaces", False))
    prompt = tokenizer.decode(start["check_ids"])
    if tokenizer(prompt, add_special_tokens=False).input_ids != start["check_ids"]:
        raise SystemExit("the tokenizer reloaded under transformers 4.45 tokenizes differently")
    model = _load_model(out, meta["arch"])
    finetuned = out / "their_adapter_start.pt"
    _start_adapter(model, start["prev"], finetuned)

    sys.argv = ["attack.py", *lora_argv(1, finetuned)]
    sys.modules.setdefault("datasets", _Stub("datasets"))
    with contextlib.redirect_stdout(sys.stderr):
        import args_factory
        import attack
        import utils.models as their_models
    their_models.AutoModelForSequenceClassification = types.SimpleNamespace(from_pretrained=lambda **_k: model)
    their_models.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda *_a, **_k: tokenizer)
    wrapper = their_models.ModelWrapper(attack.args)
    wrapper.start_token = meta["start_token_id"]  # the template's first token stands where their BOS would
    with torch.no_grad():
        x1 = wrapper.get_layer_inputs(torch.tensor([start["check_ids"]]))[0][0]
    drift = float((x1 - start["check_x1"]).abs().max())
    print(f"transformers {transformers.__version__}: layer-1 inputs differ from the suite's by {drift:.2e}", flush=True)
    if drift > 1e-3:
        raise SystemExit("the authors' stack does not compute the suite's model")
    trainable = [n for n, p in wrapper.model.named_parameters() if p.requires_grad]
    recorder = _Recorder(tokenizer)
    ranks: list[int] = []
    expand = wrapper.get_matrices_expansions

    def recorded_expansion(*a: Any, **k: Any) -> Any:
        B, R_Qs = expand(*a, **k)
        ranks.append(int(B))
        return B, R_Qs

    wrapper.get_matrices_expansions = recorded_expansion

    def on_alarm(*_a: Any) -> None:
        raise TimeoutError

    signal.signal(signal.SIGALRM, on_alarm)
    done = out / "theirs.json"  # earlier runs of other configurations are kept
    results = [r for r in json.loads(done.read_text())["cases"] if r["config"] not in configs] if done.exists() else []
    for (config, timeout), case in itertools.product(configs.items(), meta["cases"]):
        grads = torch.load(out / case["file"], weights_only=False)
        true_grads = []
        for name in trainable:
            A, B = grads[int(LAYER.search(name).group(1))]
            g = A if "lora_A" in name else B
            true_grads.append(g.to(torch.float32))
        shapes = {n: tuple(p.shape) for n, p in wrapper.model.named_parameters() if p.requires_grad}
        if any(tuple(g.shape) != shapes[n] for n, g in zip(trainable, true_grads)):
            raise SystemExit("the saved gradients do not fit their adapter's shapes")
        wrapper.compute_grads = lambda *_a, _g=tuple(true_grads), **_k: _g
        args = args_factory.get_args(lora_argv(case["size"], finetuned, config))
        recorder.calls.clear()
        ranks.clear()
        log = out / f"theirs_{config}_b{case['size']}_{case['index']}.log"
        t0 = time.perf_counter()
        status, texts = "ok", []
        signal.alarm(timeout)
        try:
            with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                labels = torch.zeros(1, case["size"], dtype=torch.long)  # read only by compute_grads, replaced
                prediction, _ = attack.reconstruct(args, torch.device("cpu"), (case["prompts"], labels), None, wrapper)
            texts = recorder.calls[1][1:] if len(recorder.calls) > 1 else list(prediction)
        except TimeoutError:
            status = f"timed out after {timeout} s"
        except Exception as exc:  # their code failing on a case is a result to report
            status = f"failed: {type(exc).__name__}: {exc}"
        finally:
            signal.alarm(0)
        seconds = time.perf_counter() - t0
        print(f"theirs ({config}) on batch {case['size']}#{case['index']}: {status}, rank {ranks}, {seconds:.1f} s",
              flush=True)
        results.append({"config": config, "size": case["size"], "index": case["index"], "status": status, "texts": texts,
                        "rank": ranks[0] if ranks else None, "seconds": seconds})
        # written after every case, so a long run's finished cases can be scored while it goes on
        (out / "theirs.json").write_text(json.dumps({"transformers": transformers.__version__, "cases": results}, indent=1))


# ---- step 3: one scoring for both -------------------------------------------------------------


def score(out: Path) -> str:
    """Both attacks' texts scored as the harness scores a row; a markdown table, also written to
    ``comparison.md`` (and the numbers to ``comparison.json``)."""
    from transformers import AutoTokenizer

    from benchmark.running import metrics

    meta = json.loads((out / "meta.json").read_text())
    runs = json.loads((out / "theirs.json").read_text())["cases"]
    configs = list(dict.fromkeys(r["config"] for r in runs))
    found = {(r["config"], r["size"], r["index"]): r for r in runs}
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")

    def fmt(x: Any, spec: str = ".2f") -> str:
        return format(x, spec) if isinstance(x, float) else str(x)

    head = ["case", "batch", "ours ROUGE-1", "ours token recall", "ours rank", "ours s"]
    for c in configs:
        head += [f"theirs {c} ROUGE-1", f"theirs {c} token recall", f"theirs {c} rank", f"theirs {c} s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    for case in meta["cases"]:
        ours = case["ours"]
        row: dict[str, Any] = {"size": case["size"], "index": case["index"], "ours": ours}
        cells = [f"b{case['size']}#{case['index']}", str(case["size"]), fmt(ours["rouge1"]), fmt(ours["token_recall"]),
                 fmt(ours["rank_l0"], ".0f"), fmt(ours["attack_s"], ".0f")]
        for c in configs:
            got = found.get((c, case["size"], case["index"]))
            if got is None or got["status"] != "ok":
                r1, rec = (got["status"] if got else "not run"), None
            else:
                texts = [metrics.private_text(t, meta["template"], meta["label_names"]) for t in got["texts"]]
                sc = metrics.score_reconstruction(case["references"], texts, tokenizer)
                r1, rec = sc["rouge1"], sc["token_recall"]
            row[c] = {"rouge1": r1, "token_recall": rec, "rank": got and got["rank"], "seconds": got and got["seconds"]}
            cells += [fmt(r1), fmt(rec), str(got and got["rank"]), fmt(got and got["seconds"], ".0f")]
        rows.append(row)
        lines.append("| " + " | ".join(cells) + " |")
    (out / "comparison.json").write_text(json.dumps(rows, indent=1))
    table = "\n".join(lines)
    (out / "comparison.md").write_text(table + "\n")
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", choices=("all", "save", "theirs", "score"), default="all")
    ap.add_argument("--out", type=Path, default=Path("/tmp/dager_compare"), help="working folder (views, logs, table)")
    ap.add_argument("--dager-src", type=Path, help="a checkout of the authors' DAGER (attack.py, utils/, args_factory.py)")
    ap.add_argument("--compat-site", type=Path, help="folder with transformers 4.45 and peft 0.13 (see the docstring)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batches", type=int, default=1, help="private batches per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--their-configs", nargs="+", default=["defaults=900", "lora_tol=900", "lora_sh=300"], metavar="NAME=SECONDS",
                    help=f"their thresholds to run ({', '.join(CONFIGS)}) and the seconds each may take per case")
    a = ap.parse_args(argv)
    configs = {k: int(v) for k, _, v in (c.partition("=") for c in a.their_configs)}
    if set(configs) - set(CONFIGS):
        ap.error(f"--their-configs: unknown {sorted(set(configs) - set(CONFIGS))}; valid: {', '.join(CONFIGS)}")
    if a.step in ("all", "theirs") and a.dager_src is None:
        ap.error("--dager-src is needed to run the authors' code")
    if a.step in ("all", "save"):
        save(a.out, a.batch_sizes, a.batches, a.seed)
    if a.step == "theirs" and os.environ.get("_DAGER_CHILD"):
        theirs(a.out, a.dager_src, configs)
    elif a.step in ("all", "theirs"):
        if a.compat_site is None:
            ap.error("--compat-site is needed to run the authors' code (see the docstring)")
        env = dict(os.environ, _DAGER_CHILD="1", PYTHONPATH=os.pathsep.join([str(a.compat_site), str(a.dager_src)]))
        subprocess.run([sys.executable, __file__, "--step", "theirs", "--out", str(a.out), "--dager-src",
                        str(a.dager_src), "--their-configs", *a.their_configs], env=env, check=True)
    if a.step in ("all", "score"):
        print(score(a.out))


if __name__ == "__main__":
    main()

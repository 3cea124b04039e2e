"""report.html and the figures: every table and figure of report.md is on the page, figures are embedded
and fit a page, no panel holds more than six series, and coinciding series are named as such."""

import base64
import json
import re
import struct
from html.parser import HTMLParser

import pytest

from benchmark.reporting import figures
from benchmark.reporting.report import write_report

DIRS = {"rouge1": True}
DEFENSES = ["plain_lora", "she_lora_0.125", "maskcrypt_0.125", "dp", "she_lora_20", "full_he_dense", "secagg",
            "she_lora_private_start"]


def _row(defense, batch, i, rouge, mode="naive", scenario="r1"):
    params = {"budget_scale": 0.00625} if defense.endswith("0.125") else {}
    return {"run_id": "synthetic", "cell_id": f"{scenario}-{defense}-{batch}-{mode}-{i}", "cell_key": f"k-{scenario}-{defense}-{batch}-{mode}-{i}",
            "scenario": scenario, "defense": defense, "defense_name": defense.split("_0")[0].split("_20")[0],
            "attack": "dager", "attack_mode": mode, "seed": i % 2, "status": "ok", "rouge1": rouge,
            "metric_directions": DIRS, "probe_batch_size": batch, "probe_batch": i, "probe_rank": 64, "probe_round": 1,
            "observation": "grad", "threat_init": "server", "tiers": "low:r4:b0.01/high:r64:b0.01",
            "defense_params": params, "utility": 0.7, "utility_lo": 0.66, "utility_hi": 0.74, "utility_n": 512,
            "bytes_up_per_client_round": 1e6 * (1 + DEFENSES.index(defense)), "bytes_down_per_client_round": 2e6,
            "enc_s": 0.1, "agg_s": 1.0, "train_s": 2.0, "finished_at": f"2026-01-01T00:00:{i:02d}"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    run = root / "synthetic"
    run.mkdir()
    rows = []
    for d in DEFENSES:
        for batch in (4, 8, 16):
            for mode in ("naive", "adaptive"):
                # plain LoRA and SHE-LoRA 0.125 coincide case by case (the reviewer's hidden-series example)
                value = 1.0 / batch if d in ("plain_lora", "she_lora_0.125") else 0.05 * DEFENSES.index(d) / batch
                rows += [_row(d, batch, i, value) | {"attack_mode": mode, "cell_id": f"{d}-{batch}-{mode}-{i}"}
                         for i in range(4)]
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "manifest.json").write_text(json.dumps({"run_id": "synthetic", "argv": ["shebench", "run"],
                                                   "suite": {"name": "custom", "scenarios": [], "attacks": []}}))
    saved = []
    original = figures.save

    def keep(fig, path):
        saved.append((path.name, [ax for ax in fig.axes if ax.get_visible()],
                      [len(ax.get_legend_handles_labels()[1]) for ax in fig.axes if ax.get_visible()],
                      [lab for ax in fig.axes for lab in ax.get_legend_handles_labels()[1]]))
        original(fig, path)

    figures.save = keep
    try:
        md = write_report([run], root / "out", calibration_runs=[])
    finally:
        figures.save = original
    return md, saved


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.images, self.anchors, self.links, self.scripts = [], [], set(), [], 0
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "th":
            self._cell = ""
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "a":
            self.links.append(a.get("href"))
        elif tag == "script":
            self.scripts += 1
        if "id" in a:
            self.anchors.add(a["id"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "th":
            self.tables[-1].append(self._cell.strip())
            self._cell = None


def _png_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[16:24])


def test_the_page_holds_every_table_and_figure_of_the_markdown(report):
    md, _ = report
    page = Page()
    page.feed(md.with_suffix(".html").read_text(encoding="utf-8"))
    text = md.read_text(encoding="utf-8")
    headers = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
               for prev, line in zip([""] + text.splitlines(), text.splitlines())
               if line.startswith("|") and not prev.startswith("|")]
    assert len(headers) >= 4 and page.tables == [[re.sub(r"[`*]", "", c) for c in h] for h in headers]
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"privacy_utility_cost.png", "paper_vs_ours.png", "rouge_by_batch.png"} <= set(pictures)
    assert len(page.images) == len(pictures)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        width, _ = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert width <= figures.MAX_WIDTH_PX
    assert page.scripts == 1  # the table sorter
    sections = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert sections[0].startswith("Scorecard") and len([h for h in page.links if h and h.startswith("#")]) == len(sections)
    assert all(h[1:] in page.anchors for h in page.links if h and h.startswith("#"))


def test_no_panel_holds_more_than_six_series_and_twins_are_named(report):
    _, saved = report
    batch = [s for s in saved if s[0] == "rouge_by_batch.png"]
    assert batch, [s[0] for s in saved]
    for _name, _axes, counts, _labels in saved:
        assert max(counts, default=0) <= figures.MAX_SERIES
    _, axes, counts, labels = batch[0]
    assert len(axes) >= 2  # 16 series of one scenario split over panels, plain LoRA in each
    assert sum("plain_lora (naive)" == lab for lab in labels) == len(axes)
    assert "she_lora_0.125 (naive) = plain_lora (naive)" in labels


def test_chunks_and_twins():
    assert figures.chunks(list("abcdefgh"), pinned=["c"], limit=3) == [["c", "a", "b"], ["c", "d", "e"], ["c", "f", "g"], ["c", "h"]]
    assert figures.twins({"a": [(1, 0.5)], "b": [(1, 0.5004)], "c": [(1, 0.6)]}) == {"b": "a"}

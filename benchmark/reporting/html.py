"""``report.html``: the markdown report as one self-contained page (figures embedded, tables sortable).

A reader opens one file in a browser, with no folder of PNGs beside it and no network: figures are
inlined as ``data:`` URIs, a contents list links every section, and clicking a table header sorts
the table (a few lines of inline script; numbers sort as numbers, "–" and words last). The page is
rendered from the same ``report.md`` text, so the two never disagree. Only the markdown the report
writer emits is understood: headings, pipe tables, lists, block quotes, images, paragraphs, and
inline code, bold and italics.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1500px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:12px;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0}th:hover{background:#e6eefc}
tr:nth-child(even) td{background:#fafafa}
blockquote{color:#555;border-left:3px solid #ccc;margin:.5em 0;padding:0 1em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}nav li{margin:.1em 0}
"""

SCRIPT = """
function key(t){const s=t.trim();const m=s.match(/^-?[0-9]+(\\.[0-9]+)?(e-?[0-9]+)?/i);
 return m?[0,parseFloat(m[0]),s]:[1,0,s.toLowerCase()];}
function sortBy(th){const table=th.closest('table'),body=table.tBodies[0],i=th.cellIndex;
 const asc=th.dataset.dir!=='asc';th.dataset.dir=asc?'asc':'desc';
 const rows=[...body.rows].sort((a,b)=>{const x=key(a.cells[i].textContent),y=key(b.cells[i].textContent);
  const c=x[0]-y[0]||(x[0]===0?x[1]-y[1]:x[2].localeCompare(y[2]));return asc?c:-c;});
 rows.forEach(r=>body.appendChild(r));}
document.querySelectorAll('th').forEach(th=>th.addEventListener('click',()=>sortBy(th)));
"""

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
_ORDERED = re.compile(r"^\d+\. ")


def slug(text: str, taken: set[str]) -> str:
    """A unique anchor for a heading."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def inline(text: str) -> str:
    """Escape, then the inline markdown the report uses: `code`, **bold**, *italics*."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        esc = html.escape(part)
        esc = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc)
        esc = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", esc)
        out.append(esc)
    return "".join(out)


def _cells(line: str) -> list[str]:
    body = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def _table(lines: list[str]) -> str:
    head, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    th = "".join(f"<th>{inline(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _image(alt: str, src: str, folder: Path) -> str:
    path = folder / src
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return f"<p><i>figure {html.escape(src)} is missing</i></p>"
    return (f'<figure id="fig-{html.escape(Path(src).stem)}"><img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(src)}</figcaption></figure>')


def to_html(markdown: str, folder: Path, title: str = "shebench report") -> str:
    """The page for ``markdown`` whose images are files in ``folder``."""
    lines = markdown.splitlines()
    body: list[str] = []
    toc: list[tuple[str, str]] = []
    taken: set[str] = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            text = line[level:].strip()
            anchor = slug(text, taken)
            if level == 2:
                toc.append((anchor, text))
            body.append(f'<h{level} id="{anchor}">{inline(text)}</h{level}>')
            i += 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            body.append(_table(lines[i:j]))
            i = j
        elif _IMAGE.match(line.strip()):
            m = _IMAGE.match(line.strip())
            body.append(_image(m["alt"], m["src"], folder))
            i += 1
        elif line.startswith(">"):
            j = i
            while j < len(lines) and lines[j].startswith(">"):
                j += 1
            quoted = " ".join(x[1:].strip() or "\n" for x in lines[i:j])
            paras = "".join(f"<p>{inline(p.strip())}</p>" for p in quoted.split("\n") if p.strip())
            body.append(f"<blockquote>{paras}</blockquote>")
            i = j
        elif line.startswith("- ") or _ORDERED.match(line):
            ordered = not line.startswith("- ")
            j = i
            items = []
            while j < len(lines) and (lines[j].startswith("- ") if not ordered else _ORDERED.match(lines[j])):
                items.append(re.sub(r"^(- |\d+\. )", "", lines[j]))
                j += 1
            tag = "ol" if ordered else "ul"
            body.append(f"<{tag}>" + "".join(f"<li>{inline(x)}</li>" for x in items) + f"</{tag}>")
            i = j
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(("#", "|", ">", "- ")) \
                    and not _IMAGE.match(lines[j].strip()) and not _ORDERED.match(lines[j]):
                j += 1
            body.append(f"<p>{inline(' '.join(x.strip() for x in lines[i:j]))}</p>")
            i = max(j, i + 1)
    nav = "<nav><b>Contents</b><ul>" + "".join(f'<li><a href="#{a}">{inline(t)}</a></li>' for a, t in toc) + "</ul></nav>"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body[0] if body else ''}\n{nav}\n" + "\n".join(body[1:])
            + f"\n<script>{SCRIPT}</script></body></html>\n")


def write_html(report_md: Path) -> Path:
    """``report.html`` beside ``report_md``, its figures read from the same folder."""
    report_md = Path(report_md)
    out = report_md.with_suffix(".html")
    out.write_text(to_html(report_md.read_text(encoding="utf-8"), report_md.parent), encoding="utf-8")
    return out

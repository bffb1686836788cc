"""Every line the code, configs and docs cite from py-faster-rcnn (and from Caffe, the MSRA prototxts and
Detectron's pickle_caffe_blobs.py) exists at the cited commit, and every value quoted beside a citation is the one on the cited line.

The cited files are kept as fixtures of only the cited lines: ``tests/fixtures/<source>/<path>.json`` holds
``{"repo", "commit", "path", "num_lines", "lines": {line_number: text}}`` (ranges longer than
``_FULL_RANGE`` lines keep their two ends). The forms recognised are the ones the project writes:
``path/file.py:58``, ``file.py:38/135``, ``file.py:47,188``, ``file.py:228-319``, ``file.prototxt l.470``,
``file.prototxt lines 22-112``, and a bare ``(line 146)`` after a file named earlier on the same line. A file
name that is not a whole path (``solver.prototxt:5``) means the file of that name cited last before it in the
same document. A value is "quoted" when a key of the cited lines (``BG_THRESH_LO``, ``stepsize``,
``iter_size``, ...) is followed by a number in the text between the neighbouring citations (within one
``;``/``|`` part of the line).

After a citation is added or changed, rebuild the fixtures from the sources (read with git, no network):

    python tests/test_citations.py --rebuild pfr=/path/py-faster-rcnn/.git caffe=/path/caffe/.git \\
        msra=/path/deep-residual-networks/.git detectron=/path/Detectron/.git
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
#: source -> (repository, commit) the fixtures are cut from.
SOURCES = {
    "pfr": ("rbgirshick/py-faster-rcnn", "781a917b378dbfdedb45b6a56189a31982da1b43"),
    "caffe": ("BVLC/caffe", "9b891540183ddc834a02b2bd81b31afae71b2153"),
    "msra": ("KaimingHe/deep-residual-networks", "a7026cb6d478e131b765b898c312e25f9f6dc031"),
    "detectron": ("facebookresearch/Detectron", "04155a01a6ea68f22ac27c79a822066457941ece"),
}
_FULL_RANGE = 12  # ranges up to this many lines are stored whole, longer ones by their two ends

_FILE = r"(?<![\w./-])([A-Za-z0-9_][\w./-]*\.(?:py|yml|prototxt|pt|sh|cpp|proto))"
_SPEC = r"(\d+(?:-\d+)?(?:[,/]\d+(?:-\d+)?)*)"
_CITE = re.compile(_FILE + r"`?(?::| l\.| lines? )" + _SPEC + r"(?![\d.]*\d)")
_BARE = re.compile(r"(?<![\w.])(?:line|lines|l\.) ?" + _SPEC + r"(?![\d.]*\d)")
_FILE_ONLY = re.compile(_FILE)
_SCANNED = ("detres/**/*.py", "tools/*.py", "examples/*.py", "configs/**/*.yaml", "README.md", "ARCHITECTURE.md",
            "docs/**/*.md")


@dataclass
class Citation:
    doc: str  # document and line: "configs/_base_/voc.yaml:45"
    file: str  # as written
    lines: list[tuple[int, int]]  # (first, last) per part of the spec
    window: str  # the text a quoted value is looked for in
    resolved: tuple[str, str] | None = None  # (source, path) of its fixture


def _parse_spec(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in re.split(r"[,/]", spec):
        a, _, b = part.partition("-")
        out.append((int(a), int(b or a)))
    return out


def _window(line: str, start: int, end: int, bounds: list[tuple[int, int]]) -> str:
    """The text of ``line`` around [start, end): back to the previous citation and on to the next one, within
    the ';' / '|' separated part holding it."""
    lo = max([e for s, e in bounds if e <= start] + [line.rfind(";", 0, start) + 1, line.rfind("|", 0, start) + 1])
    ends = [s for s, e in bounds if s >= end] + [x for x in (line.find(";", end), line.find("|", end)) if x >= 0]
    return line[lo:min(ends + [len(line)])]


def find_citations(doc: str, text: str) -> list[Citation]:
    """Every citation in ``text`` (document ``doc``), in order."""
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        found = [(m.start(), m.end(), m.group(1), m.group(2)) for m in _CITE.finditer(line)]
        taken = [(s, e) for s, e, _, _ in found]
        for m in _BARE.finditer(line):
            if any(s <= m.start() < e for s, e in taken):
                continue
            before = [f for f in _FILE_ONLY.finditer(line[:m.start()])]
            if before:  # "(line 146)" after a file named on the same line
                found.append((m.start(), m.end(), before[-1].group(1), m.group(1)))
        found.sort()
        bounds = [(s, e) for s, e, _, _ in found]
        for s, e, file, spec in found:
            out.append(Citation(f"{doc}:{no}", file, _parse_spec(spec), _window(line, s, e, bounds)))
    return out


def load_fixtures(root: Path = FIXTURES) -> dict[tuple[str, str], dict]:
    """(source, path) -> the fixture's JSON object."""
    out = {}
    for f in sorted(root.glob("*/**/*.json")):
        source = f.relative_to(root).parts[0]
        data = json.loads(f.read_text())
        out[(source, data["path"])] = data
    return out


def _resolve(c: Citation, fixtures: dict, last: dict[str, tuple[str, str]]) -> tuple[str, str] | str | None:
    """The fixture key of ``c``, None for a file of this project, or a problem (a string)."""
    cands = [k for k in fixtures if k[1] == c.file or k[1].endswith("/" + c.file)]
    if len({k[0] for k in cands}) > 1:  # a name in py-faster-rcnn and in another source: py-faster-rcnn's
        cands = [k for k in cands if k[0] == "pfr"]
    if len(cands) > 1:
        name = c.file.rsplit("/", 1)[-1]
        recent = last.get(name)
        if recent is None or recent not in cands:
            return f"{c.doc}: {c.file} is ambiguous ({', '.join(k[1] for k in cands)}); write its whole path"
        cands = [recent]
    if cands:
        return cands[0]
    if (ROOT / c.file).exists() or c.file.split("/")[0] in ("detres", "tools", "tests", "configs"):
        return None
    return f"{c.doc}: {c.file} is cited by line but has no fixture under tests/fixtures (rebuild them)"


_VALUE = r"[\s:=`'\"(]{0,4}(-?\d+(?:\.\d+)?)(?![\d.]*\d)"


def _quoted_value_problems(c: Citation, cited: dict[int, str]) -> list[str]:
    """A key of the cited lines followed by a number in the citation's window must have that number there."""
    values: dict[str, set[float]] = {}
    for text in cited.values():
        for m in re.finditer(r"([A-Za-z_][\w.]*)\s*[:=]\s*\(?\s*(-?\d+(?:\.\d+)?)", text):
            values.setdefault(m.group(1).rsplit(".", 1)[-1], set()).add(float(m.group(2)))
    out = []
    for key, have in values.items():
        for m in re.finditer(r"(?<![A-Za-z0-9_])" + re.escape(key) + r"(?![A-Za-z0-9_])" + _VALUE, c.window):
            if float(m.group(1)) not in have:
                out.append(f"{c.doc}: quotes {key} {m.group(1)} beside {c.file}, whose cited lines have "
                           f"{key} = {sorted(have)}")
    return out


def resolve_citations(citations: list[Citation], files) -> list[str]:
    """Set each citation's ``resolved`` to its (source, path) among ``files``; returns the problems (unknown or
    ambiguous files)."""
    problems, last = [], {}
    doc_of = None
    for c in citations:
        doc = c.doc.rsplit(":", 1)[0]
        if doc != doc_of:
            doc_of, last = doc, {}
        key = _resolve(c, files, last)
        if isinstance(key, str):
            problems.append(key)
        elif key is not None:
            c.resolved = key
            last[key[1].rsplit("/", 1)[-1]] = key
    return problems


def check_citations(citations: list[Citation], fixtures: dict) -> list[str]:
    """Problems: an unknown or ambiguous file, a line the fixture (the file at its commit) does not have, a quoted
    value the cited lines do not have."""
    problems = resolve_citations(citations, fixtures)
    for c in citations:
        if c.resolved is None:
            continue
        fx = fixtures[c.resolved]
        key = c.resolved
        cited = {}
        for a, b in c.lines:
            wanted = range(a, b + 1) if b - a < _FULL_RANGE else (a, b)
            missing = [n for n in wanted if str(n) not in fx["lines"] or n > fx["num_lines"] or a > b]
            if missing:
                problems.append(f"{c.doc}: {c.file} line {missing[0]} ({a}-{b}) is not a line of {key[1]} at "
                                f"{fx['commit'][:7]} as the fixture holds it (it has {fx['num_lines']} lines)")
            cited.update({n: fx["lines"][str(n)] for n in wanted if str(n) in fx["lines"]})
        problems += _quoted_value_problems(c, cited)
    return problems


def scan_project() -> list[Citation]:
    out = []
    for pattern in _SCANNED:
        for path in sorted(ROOT.glob(pattern)):
            out += find_citations(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
    return out


# --------------------------------------------------------------------------------------------------
# the project's citations
# --------------------------------------------------------------------------------------------------
def test_every_cited_line_and_quoted_value_is_in_the_cited_file():
    fixtures = load_fixtures()
    citations = scan_project()
    assert len(citations) >= 80  # the scanner finds them (a broken pattern would find none and pass)
    assert check_citations(citations, fixtures) == []
    used = {c.resolved for c in citations if c.resolved}
    assert used == set(fixtures), f"fixtures nobody cites: {sorted(set(fixtures) - used)}"
    for (source, _), fx in fixtures.items():
        assert (fx["repo"], fx["commit"]) == SOURCES[source]


def test_the_fixtures_are_at_the_commit_compare_names():
    from detres.evaluation.compare import PFR_COMMIT

    assert SOURCES["pfr"][1].startswith(PFR_COMMIT)
    fx = load_fixtures()[("pfr", "experiments/cfgs/faster_rcnn_end2end.yml")]
    assert fx["lines"]["9"] == "  BG_THRESH_LO: 0.0"  # the line the VOC background range rests on


def test_the_forms_the_project_writes_are_parsed():
    text = ("  min_size: 600   # Faster R-CNN Sec. 3.3; pfr config.py:38/135 TRAIN/TEST.SCALES (600,)\n"
            "x  # pfr lib/datasets/pascal_voc.py:47,188 use_diff; models/a/train.prototxt l.664-673: loss\n"
            "y  # pfr models/a/train.prototxt: biases lr_mult 2 (conv3_1: line 146); decay (train.prototxt lines 22-112)\n"
            "z  tools/train_faster_rcnn_alt_opt.py:228-319, `faster_rcnn_alt_opt.yml:3` and detres/config.py:12.5\n")
    got = [(c.doc, c.file, c.lines) for c in find_citations("doc", text)]
    assert got == [("doc:1", "config.py", [(38, 38), (135, 135)]),
                   ("doc:2", "lib/datasets/pascal_voc.py", [(47, 47), (188, 188)]),
                   ("doc:2", "models/a/train.prototxt", [(664, 673)]),
                   ("doc:3", "models/a/train.prototxt", [(146, 146)]),
                   ("doc:3", "train.prototxt", [(22, 112)]),
                   ("doc:4", "tools/train_faster_rcnn_alt_opt.py", [(228, 319)]),
                   ("doc:4", "faster_rcnn_alt_opt.yml", [(3, 3)])]
    first = find_citations("doc", text)[0]
    assert "SCALES (600,)" in first.window and "min_size" not in first.window  # the window stops at ";"


# --------------------------------------------------------------------------------------------------
# negative controls
# --------------------------------------------------------------------------------------------------
_GOOD = ("[0.0, 0.5): BG_THRESH_LO 0.0 in experiments/cfgs/faster_rcnn_end2end.yml:9; "
         "step at 350k (stepsize 350000, models/coco/VGG16/faster_rcnn_end2end/solver.prototxt:5); "
         "COCO: solver.prototxt:15 iter_size 2\n")


def test_a_correct_text_passes():
    assert check_citations(find_citations("doc", _GOOD), load_fixtures()) == []


def test_a_wrong_line_number_in_a_citation_fails():
    bad = _GOOD.replace("faster_rcnn_end2end.yml:9", "faster_rcnn_end2end.yml:8")
    problems = check_citations(find_citations("doc", bad), load_fixtures())
    assert len(problems) == 1 and "line 8" in problems[0] and "faster_rcnn_end2end.yml" in problems[0]


def test_a_wrong_line_number_in_a_fixture_fails(tmp_path):
    """The fixture moved by one line (as if cut from another commit): the citation no longer finds its line."""
    import shutil

    shutil.copytree(FIXTURES, tmp_path / "fx")
    f = tmp_path / "fx" / "pfr" / "experiments" / "cfgs" / "faster_rcnn_end2end.yml.json"
    data = json.loads(f.read_text())
    data["lines"] = {str(int(k) + 1): v for k, v in data["lines"].items()}
    f.write_text(json.dumps(data))
    problems = check_citations(find_citations("doc", _GOOD), load_fixtures(tmp_path / "fx"))
    assert len(problems) == 1 and "line 9" in problems[0]


def test_a_wrong_quoted_value_fails():
    bad = _GOOD.replace("BG_THRESH_LO 0.0", "BG_THRESH_LO 0.1")
    problems = check_citations(find_citations("doc", bad), load_fixtures())
    assert len(problems) == 1 and "BG_THRESH_LO 0.1" in problems[0] and "[0.0]" in problems[0]
    # VOC's stepsize beside COCO's solver.prototxt:5 fails (and "solver.prototxt:15", a short name, is the COCO
    # solver cited last before it: the VOC solver's line 15 holds no iter_size)
    assert check_citations(find_citations("doc", _GOOD.replace("stepsize 350000", "stepsize 50000")),
                           load_fixtures())[0].startswith("doc:1: quotes stepsize 50000")


def test_an_ambiguous_or_unknown_file_fails():
    problems = check_citations(find_citations("doc", "pfr solver.prototxt:5 stepsize\nlib/nope.py:3\n"),
                               load_fixtures())
    assert len(problems) == 2 and "ambiguous" in problems[0] and "no fixture" in problems[1]


# --------------------------------------------------------------------------------------------------
# rebuilding the fixtures (not a test)
# --------------------------------------------------------------------------------------------------
def rebuild(git_dirs: dict[str, str]) -> None:
    """Cut the fixtures anew from ``git_dirs`` (source -> a git directory holding ``SOURCES[source]``'s commit):
    every line the project cites, nothing else."""
    def show(source, path):
        return subprocess.run(["git", "--git-dir", git_dirs[source], "show", f"{SOURCES[source][1]}:{path}"],
                              check=True, capture_output=True, text=True).stdout.splitlines()

    files = {}
    for source in git_dirs:
        listing = subprocess.run(["git", "--git-dir", git_dirs[source], "ls-tree", "-r", "--name-only",
                                  SOURCES[source][1]], check=True, capture_output=True, text=True).stdout.split()
        files.update({(source, p): None for p in listing if re.search(r"\.(py|yml|prototxt|pt|sh|cpp|proto)$", p)})
    citations = scan_project()
    for problem in resolve_citations(citations, files):
        print(problem)
    out: dict[tuple[str, str], dict] = {}
    for c in citations:
        if c.resolved is None:
            continue
        source, path = c.resolved
        if c.resolved not in out:
            text = show(source, path)
            out[c.resolved] = {"repo": SOURCES[source][0], "commit": SOURCES[source][1], "path": path,
                               "num_lines": len(text), "lines": {}, "_text": text}
        fx = out[c.resolved]
        for a, b in c.lines:
            for n in (range(a, b + 1) if b - a < _FULL_RANGE else (a, b)):
                if 1 <= n <= fx["num_lines"]:
                    fx["lines"][str(n)] = fx["_text"][n - 1]
    for (source, path), fx in out.items():
        del fx["_text"]
        fx["lines"] = dict(sorted(fx["lines"].items(), key=lambda kv: int(kv[0])))
        dest = FIXTURES / source / (path + ".json")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(fx, indent=1) + "\n")
        print(f"{dest.relative_to(ROOT)}: {len(fx['lines'])} lines")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--rebuild":
        sys.exit(__doc__)
    rebuild(dict(arg.split("=", 1) for arg in sys.argv[2:]))

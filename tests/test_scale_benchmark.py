"""The full-size benchmark's pieces on small sizes: its synthetic files read the same through pycocotools and
detres, and its worker pass reads every target (the figures themselves come from tools/benchmark.py scale)."""
from __future__ import annotations

import contextlib
import io

from detres.benchmarks.scale import GB, _pss, _tree_pss, _worker_pass
from detres.benchmarks.synthetic import write_coco_instances, write_voc_tree
from detres.data.coco import COCODetection
from detres.data.voc import build_voc


def test_synthetic_coco_reads_alike_in_pycocotools_and_detres(tmp_path):
    from pycocotools.coco import COCO

    ann = write_coco_instances(tmp_path / "a.json", 30, 200, image_dir=tmp_path / "img", seed=3)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann))
    ds = COCODetection(tmp_path / "img", ann, train=False)
    assert ds.ids == [im["id"] for im in coco.dataset["images"]] and len(coco.getCatIds()) == 80
    crowd = sum(a["iscrowd"] for a in coco.dataset["annotations"])
    assert 0 < crowd < 200  # both kinds of segmentation are written
    assert sum(len(ds.get_target(i)["boxes"]) for i in range(len(ds))) == 200 - crowd


def test_worker_pass_reads_every_target(tmp_path):
    root = write_voc_tree(tmp_path / "voc", {"2007": 6, "2012": 5}, seed=1)
    ds = build_voc(root, ("2007_trainval", "2012_trainval"), keep_difficult=True)
    out = _worker_pass(ds, 2)
    assert out["boxes_read"] == sum(len(ds.get_annotation(i).boxes) for i in range(len(ds)))
    assert out["workers"] == 2
    # the reported differences are those of the reported totals (not, e.g., end minus the empty set's start)
    assert out["pass_adds_gb"] == out["total_pss_gb_after_pass"] - out["total_pss_gb_workers_started"]
    assert out["dataset_in_workers_adds_gb"] == (out["total_pss_gb_after_pass"]
                                                 - out["empty_dataset_total_pss_gb"])


def test_tree_pss_counts_the_children_in_gb():
    """A grandchild holding 150 MB of its own written pages adds 0.15 GB (plus two interpreters' few MB) to the
    tree's PSS and nothing to this process's; once it exits the tree is back to what it was."""
    import subprocess
    import sys

    size = 150_000_000
    before = _tree_pss() - _pss()  # children already there (e.g. a forkserver an earlier test started)
    hold = f"import sys; b = b'x' * {size}; print('ready', flush=True); sys.stdin.read()"
    # held by a grandchild, as DataLoader workers are the forkserver's children
    child = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                              f"{hold!r}])"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        own, tree = _pss(), _tree_pss()
        assert size / GB <= tree - own - before <= size / GB + 0.05, (own, tree, before)
    finally:
        child.communicate("")
    assert abs(_tree_pss() - _pss() - before) < 0.005

"""The full-size benchmark's pieces on small sizes: its synthetic files read the same through pycocotools and
detres, and its worker pass reads every target (the figures themselves come from tools/benchmark.py scale)."""
from __future__ import annotations

import contextlib
import io

from detres.benchmarks.scale import _worker_pass
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
    assert out["total_pss_gb_after_pass"] > 0

"""Issue 25, item 4: torchvision's undocumented detection internals enter detres through one adapter module,
``detres/modeling/tv_private.py``, whose contract names each symbol and fails, naming it, when torchvision
changes it; no underscore-private torchvision name is used anywhere."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from _engine_helpers import make_spec
from detres.modeling import build_detector
from detres.modeling import tv_private

ROOT = Path(__file__).resolve().parents[1]
#: torchvision modules whose contents are not a documented API: only tv_private may import from them
INTERNAL = re.compile(r"torchvision\.models\.detection\.(rpn|roi_heads|transform|image_list|generalized_rcnn|_utils)"
                      r"|torchvision\.models\.detection import _utils")
PRIVATE_NAMES = re.compile(r"_get_top_n_idx|_topk_min|FasterRCNN\.__new__|GeneralizedRCNN\.__init__|det_utils")


def test_torchvision_still_matches_the_contract():
    assert tv_private.check_contract() == []
    assert len(tv_private.CONTRACT) >= 20


def test_a_changed_or_missing_symbol_is_named():
    class RoIHeads:  # a torchvision release that renamed a parameter and dropped a method
        def select_training_samples(self, boxes, targets):
            pass

    owners = dict(tv_private.OWNERS, RoIHeads=RoIHeads)
    problems = tv_private.check_contract({"RoIHeads.select_training_samples": ("proposals", "targets"),
                                          "RoIHeads.has_mask": ()}, owners)
    assert len(problems) == 2
    assert problems[0].startswith("torchvision changed RoIHeads.select_training_samples: parameters ['boxes'")
    assert problems[1].startswith("torchvision changed RoIHeads.has_mask: not found")
    assert tv_private.check_contract({"RoIHeads.has_mask": ()}) == []  # the real one matches


def test_the_attributes_detres_reads_exist_on_a_built_detector():
    model = build_detector(make_spec(tiny=True), 3)
    for owner, obj in (("RegionProposalNetwork", model.rpn), ("RoIHeads", model.roi_heads), ("FasterRCNN", model)):
        missing = [a for a in tv_private.INSTANCE_ATTRIBUTES[owner] if not hasattr(obj, a)]
        assert missing == [], f"torchvision's {owner} no longer has {missing}"


@pytest.mark.parametrize("pattern", [INTERNAL, PRIVATE_NAMES], ids=["internal-modules", "private-names"])
def test_only_the_adapter_reaches_into_torchvision(pattern):
    offenders = []
    for path in sorted((ROOT / "detres").rglob("*.py")) + sorted((ROOT / "tools").glob("*.py")):
        if path.name == "tv_private.py":
            continue
        code = "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
        if pattern is PRIVATE_NAMES:  # names in docstrings count only when called or imported
            code = "\n".join(ln for ln in code.splitlines() if "import" in ln or "(" in ln and "``" not in ln)
        if pattern.search(code):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []

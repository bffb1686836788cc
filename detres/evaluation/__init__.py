"""Evaluation: VOC devkit-rule AP, COCOeval (computed by faster-coco-eval), the results-file formats, inference,
run comparison.

Evaluators share one protocol: ``reset()``, ``process(targets, outputs)`` (outputs in ORIGINAL image
pixels), ``evaluate() -> dict`` (fractions in [0, 1]; gathers across ranks and returns the same
metrics on every rank).
"""
from detres.evaluation.coco import COCOEvaluator, evaluate_coco_results, format_coco_table, load_coco_results
from detres.evaluation.inference import inference_on_dataset
from detres.evaluation.voc import (VOCEvaluator, evaluate_voc, format_voc_table, read_voc_results, voc_eval,
                                   write_voc_results)

__all__ = [
    "VOCEvaluator", "COCOEvaluator", "inference_on_dataset", "voc_eval", "evaluate_voc",
    "write_voc_results", "read_voc_results", "evaluate_coco_results", "load_coco_results", "format_voc_table",
    "format_coco_table",
]

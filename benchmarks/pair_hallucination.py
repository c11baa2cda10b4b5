"""CHAIR of a pair folder's chosen and rejected captions on the synthetic world: does a
builder's rejected answer hallucinate more objects than its chosen one?

    python benchmarks/pair_hallucination.py /tmp/realign/pairs --world /tmp/world_sft1/world

Scores the caption records (`provenance.task == "caption"`) of every `pairs-*.jsonl` in the
folder against the ground truth of the record's image (the image both answers are about);
for pairs with a `rejected_image` (Re-Align) also the rejected caption against that image's
ground truth, which it was written from. CHAIR uses the world's synonym table without COCO's
extra rules.
"""

from __future__ import annotations

import argparse
import glob
import os

from realign_jax.eval.chair import chair, load_synonyms
from realign_jax.pairs.builder_inputs import read_records
from realign_jax.synthetic.benchmarks import object_lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", help="a build_pairs output folder")
    parser.add_argument("--world", required=True, help="the synthetic world the records came from")
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    rows = [r for path in sorted(glob.glob(os.path.join(args.pairs, "pairs-*.jsonl"))) for r in read_records(path)]
    captions = [r for r in rows if (r.get("provenance") or {}).get("task") == "caption"]
    if not captions:
        raise SystemExit(f"{args.pairs}: no caption pairs (provenance.task == 'caption') to score")
    truth = {os.path.normpath(t["image"]): t["objects"] for t in object_lists(args.world, args.split)}
    synonyms = load_synonyms(os.path.join(args.world, "synonyms.txt"))

    def score(text_field: str, image_field: str) -> dict:
        scored = [{"image": os.path.normpath(os.path.join(args.pairs, r[image_field])), "text": r[text_field]}
                  for r in captions]
        return chair(scored, truth, synonyms, coco_rules=False)

    print(f"{len(captions)} caption pairs of {len(rows)} in {args.pairs}")
    lines = [("chosen", "image"), ("rejected", "image")]
    if all("rejected_image" in r for r in captions):
        lines.append(("rejected", "rejected_image"))
    for text_field, image_field in lines:
        s = score(text_field, image_field)
        print(f"{text_field:<9} against {image_field:<15} CHAIR_s {s['chair_s']:.3f}  CHAIR_i {s['chair_i']:.3f}  "
              f"recall {s['recall']:.3f}  hallucinated objects {s['hallucinated']} of "
              f"{s['mentions']} mentioned")


if __name__ == "__main__":
    main()

"""How much of a model's hallucination on the synthetic world is the language prior's:
absent companions against other absent objects, read from a `mode=eval` run's answers.

    python benchmarks/companion_hallucination.py /tmp/world_eval/eval

Prints, per POPE split, how often the model says yes about an absent object, and for CHAIR
the share of hallucinated objects that are the missing companion of a present anchor,
against the share expected if hallucinated objects were drawn uniformly from the absent
categories.
"""

from __future__ import annotations

import argparse
import os

from realign_jax.data.jsonl import json_objects
from realign_jax.eval.pope import SPLITS
from realign_jax.synthetic.scenes import anchors_without_companion
from realign_jax.synthetic.vocabulary import BY_NAME, CATEGORIES


def read_jsonl(path: str) -> list[dict]:
    return [row for _, row in json_objects(path)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dir", help="the eval/ folder of a mode=eval run on the world")
    folder = parser.parse_args().eval_dir
    for split in SPLITS:
        absent = [r for r in read_jsonl(os.path.join(folder, f"pope_{split}.jsonl")) if r["label"] == "no"]
        yes = sum(r["prediction"] == "yes" for r in absent) / len(absent)
        print(f"POPE {split:<12} yes on absent objects {yes:.3f} ({len(absent)} questions)")
    hallucinated = companions = 0
    expected = 0.0
    for row in read_jsonl(os.path.join(folder, "chair.jsonl")):
        truth = set(row["ground_truth"])
        missing = {str(BY_NAME[a].partner) for a in anchors_without_companion(row["ground_truth"])}
        for name in set(row["hallucinated"]):
            hallucinated += 1
            companions += name in missing
            expected += len(missing) / (len(CATEGORIES) - len(truth))
    print(f"CHAIR: {hallucinated} hallucinated objects, {companions / hallucinated:.3f} of them missing companions "
          f"(uniform over the absent categories: {expected / hallucinated:.3f})")


if __name__ == "__main__":
    main()

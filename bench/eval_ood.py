"""Top-1 on the in-distribution folder, and how well each score separates it from shifted folders.

Usage: python bench/eval_ood.py ID_DIR OOD_DIR... [--model SPEC] [--batch-size B]
Default: ../shared/data/imagenet-samples against ../shared/data/ood/dtd-textures and ood/eurosat.

Top-1 is printed when ID_DIR has a labels.csv (columns file, class_index).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

from flows.cli import ImageRow, score_folder  # noqa: E402
from scoring import load_scorer  # noqa: E402
from scoring.separation import auroc, fpr_at_tpr  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def score_all(folder: Path, scorer, batch_size: int) -> list[ImageRow]:
    rows = [row for batch in score_folder(scorer, folder, batch_size) for row in batch]
    rejected = [row for row in rows if row.rejected]
    print(f"{folder.resolve().name}: {len(rows) - len(rejected)} scored, {len(rejected)} rejected")
    return [row for row in rows if not row.rejected]


def top1(rows: list[ImageRow], labels_csv: Path) -> float:
    with labels_csv.open() as file:
        labels = {entry["file"]: int(entry["class_index"]) for entry in csv.DictReader(file)}
    labelled = [row for row in rows if row.file in labels]
    return float(np.mean([row.pred == labels[row.file] for row in labelled]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("id_dir", nargs="?", type=Path, default=SHARED / "imagenet-samples")
    parser.add_argument(
        "ood_dirs", nargs="*", type=Path, default=[SHARED / "ood" / "dtd-textures", SHARED / "ood" / "eurosat"]
    )
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    scorer = load_scorer(args.model)
    print(f"model {scorer.model_id}")
    id_rows = score_all(args.id_dir, scorer, args.batch_size)
    if (args.id_dir / "labels.csv").exists():
        print(f"top-1 on {args.id_dir.resolve().name}: {top1(id_rows, args.id_dir / 'labels.csv'):.3f}")
    ood_rows = {folder.resolve().name: score_all(folder, scorer, args.batch_size) for folder in args.ood_dirs}

    header = "".join(f"{name[:18] + ' AUROC':>26}{'FPR95':>8}" for name in ood_rows)
    print(f"{'score':<12}{header}")
    for score in scorer.score_names:
        in_scores = np.array([row.scores[score] for row in id_rows])
        cells = ""
        for rows in ood_rows.values():
            out_scores = np.array([row.scores[score] for row in rows])
            cells += f"{auroc(in_scores, out_scores):>26.3f}{fpr_at_tpr(in_scores, out_scores):>8.3f}"
        print(f"{score:<12}{cells}")


if __name__ == "__main__":
    main()

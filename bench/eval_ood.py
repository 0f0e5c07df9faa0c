"""Top-1 on the in-distribution folder, and how well each score separates it from shifted folders.

Usage: python bench/eval_ood.py [ID_DIR [OOD_DIR...]] [--model SPEC] [--out DIR]
Default: ../shared/data/imagenet-samples against ../shared/data/ood/dtd-textures and ood/eurosat.

The scores that learn from a reference (ViM) are fitted as `gradwatch calibrate` fits them, on 30% of ID_DIR chosen
by the hashes of the images' names, and those images are left out of the in-distribution side. Every folder is then
scored by the Beam pipeline (gradwatch score) into OUT/<folder name>, and the metrics are computed from its scores
table; an OUT that already holds a folder's scores is reused. Top-1 is printed when ID_DIR has a labels.csv
(columns file, class_index), on every image.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# Run as a file, this folder would come first on sys.path and bench/scoring.py would shadow the package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from bench.common import SHARED, score_columns, score_folder_with_pipeline, top1  # noqa: E402
from flows.calibrate import fit_scores  # noqa: E402
from scoring import DEFAULT_MODEL, ScoringSettings, decision_scores  # noqa: E402
from scoring.calibration import CalibrationConfig  # noqa: E402
from scoring.separation import aupr_in, aupr_out, auroc, fpr_at_tpr  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("id_dir", nargs="?", type=Path, default=SHARED / "imagenet-samples")
    parser.add_argument(
        "ood_dirs", nargs="*", type=Path, default=[SHARED / "ood" / "dtd-textures", SHARED / "ood" / "eurosat"]
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=None, help="where pipeline outputs go (default: a temp dir)")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="gradwatch-eval-"))
    print(f"scoring through the pipeline into {out}")
    names = [*decision_scores(), "feature_l1", "output_l1"]
    fitted, fit_uris = fit_scores(
        str(args.id_dir), scoring=ScoringSettings(model=args.model), config=CalibrationConfig()
    )
    id_table = score_folder_with_pipeline(args.id_dir, out / args.id_dir.resolve().name, args.model, fitted)
    print(f"model {id_table.column('model_id')[0]}; fitted scores learned on {len(fit_uris)} of its images")
    if (args.id_dir / "labels.csv").exists():
        print(f"top-1 on {args.id_dir.resolve().name}: {top1(id_table, args.id_dir / 'labels.csv'):.3f}")
    held_out = pc.invert(pc.is_in(id_table.column("uri"), pa.array(sorted(fit_uris), pa.string())))
    in_scores = score_columns(id_table.filter(held_out), names)
    for folder in args.ood_dirs:
        shifted = score_folder_with_pipeline(folder, out / folder.resolve().name, args.model, fitted)
        out_scores = score_columns(shifted, names)
        print(f"\n{args.id_dir.resolve().name} vs {folder.resolve().name}")
        print(f"{'score':<12}{'AUROC':>8}{'FPR95':>8}{'AUPR-In':>9}{'AUPR-Out':>10}")
        for name in names:
            a, b = in_scores[name], out_scores[name]
            print(f"{name:<12}{auroc(a, b):>8.3f}{fpr_at_tpr(a, b):>8.3f}{aupr_in(a, b):>9.3f}{aupr_out(a, b):>10.3f}")


if __name__ == "__main__":
    main()

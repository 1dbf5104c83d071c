"""Plot a run's `training_log.jsonl` as a PNG of training curves.

    python plot_training_log.py runs/demo                   # writes runs/demo/training_curves.png
    python plot_training_log.py runs/demo --out curves.png

The panels are described in `pretraining/curves.py`; the training app draws the same figure at every evaluation,
checkpoint and at the end of training.
"""

import sys

from pretraining.curves import plot_training_log
from pretraining.errors import OneLineParser, report
from pretraining.run_files import CURVES_PNG


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description="Plot a run's training_log.jsonl as a PNG.")
    parser.add_argument("output_dir", help="The run's output_dir (holds training_log.jsonl).")
    parser.add_argument("--out", help=f"PNG to write. Default: OUTPUT_DIR/{CURVES_PNG}.")
    try:
        args = parser.parse_args(argv)
        print(plot_training_log(args.output_dir, args.out))
    except (ValueError, OSError) as err:
        return report(err, show_traceback=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

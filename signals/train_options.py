"""The ``train`` command's options, without what training imports.

``tradingd`` builds its whole parser for every command (``--help``, ``status``, ``run``):
defining ``train``'s options here keeps numpy, pandas and xgboost out of them.
``signals.train`` is imported only when the command runs.
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` command's options."""
    parser.add_argument("--bars", type=Path, required=True, help="minute bars CSV (.gz ok)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--horizon", type=int, default=15, help="label horizon in bars")
    parser.add_argument("--train-until", type=date.fromisoformat, default=None,
                        help="last training date (YYYY-MM-DD); later dates are held out. "
                             "Without it, or with no later date: deploy mode, all the data "
                             "trains the model and the held-out report is absent")
    parser.add_argument("--first-symbols", type=int, default=None,
                        help="use the first N symbols alphabetically (default: all)")
    parser.add_argument("--label", choices=("excess", "raw"), default="excess")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="tail of the training period used for validation")
    parser.add_argument("--max-rounds", type=int, default=None,
                        help="boosting rounds at most (default 600; 60 with --small)")
    parser.add_argument("--early-stop", type=int, default=None,
                        help="rounds without validation AUC gain before stopping "
                             "(default 50; 15 with --small; 0 = never stop early)")
    parser.add_argument("--small", action="store_true",
                        help="a small, fast model (demo): depth 4, at most 60 rounds")
    parser.add_argument("--seed", type=int, default=0)


__all__ = ["add_arguments"]

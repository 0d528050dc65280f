"""``sbx dataset``, ``sbx access`` and ``sbx query``: the data foundation's commands."""

from __future__ import annotations

import typer

dataset_app = typer.Typer(
    help="Datasets (custodians register; everyone lists what they may see).", no_args_is_help=True
)
access_app = typer.Typer(help="Access requests and decisions.", no_args_is_help=True)
query_app = typer.Typer(help="Differentially private queries.", no_args_is_help=True)

"""Replay the seed notebook (placeholder, replaced by the demo module)."""
import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return 0

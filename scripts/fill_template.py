#!/usr/bin/env python3
"""Fill `${placeholders}` of a config.pbtxt template (spec/triton_interface.md section 6).

    python3 fill_template.py [-i|--in_place] <file.pbtxt> "k1:v1,k2:v2"

`string.Template.safe_substitute`: `$k` and `${k}` are replaced, unknown placeholders stay, `$$` becomes `$`.
Pairs are split on `,`, then on `:`; `\\,` and `\\:` escape a literal comma or colon in a value.
`max_queue_size` and `max_queue_delay_microseconds` default to 0. Every key given must appear in the file.
"""

from __future__ import annotations

import argparse
import re
import sys
from string import Template

PRESEEDED = {"max_queue_size": "0", "max_queue_delay_microseconds": "0"}


def split_pairs(substitutions: str) -> dict[str, str]:
    """`"a:1,b:x\\,y"` -> `{"a": "1", "b": "x,y"}`; exactly one unescaped `:` per pair."""
    values: dict[str, str] = {}
    if not substitutions:
        return values
    for pair in re.split(r"(?<!\\),", substitutions):
        if not pair:
            continue
        parts = re.split(r"(?<!\\):", pair)
        if len(parts) != 2:
            raise ValueError(f"bad substitution {pair!r}: expected exactly one ':' (escape others as '\\:')")
        key, value = (s.replace("\\,", ",").replace("\\:", ":") for s in parts)
        values[key.strip()] = value
    return values


def fill(text: str, substitutions: str) -> str:
    values = split_pairs(substitutions)
    for key in values:
        if f"${key}" not in text and f"${{{key}}}" not in text:
            raise ValueError(f"key {key!r} does not appear in the template")
    return Template(text).safe_substitute({**PRESEEDED, **values})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file_path", help="config.pbtxt template")
    p.add_argument("substitutions", help='"k1:v1,k2:v2"')
    p.add_argument("-i", "--in_place", action="store_true", help="rewrite the file instead of printing")
    args = p.parse_args(argv)
    with open(args.file_path) as f:
        text = f.read()
    try:
        out = fill(text, args.substitutions)
    except ValueError as e:
        print(f"fill_template: {args.file_path}: {e}", file=sys.stderr)
        return 2
    if args.in_place:
        with open(args.file_path, "w") as f:
            f.write(out)
    else:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

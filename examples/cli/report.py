"""A one-paragraph report from the summary."""

import csv
import sys

with open(sys.argv[1], encoding="utf-8") as src:
    rows = list(csv.DictReader(src))
warmest = max(rows, key=lambda r: float(r["mean_celsius"]))
with open(sys.argv[2], "w", encoding="utf-8") as out:
    out.write(f"{len(rows)} stations; warmest on average: {warmest['station']} "
              f"at {float(warmest['mean_celsius']):.1f} C over {warmest['readings']} readings.\n")

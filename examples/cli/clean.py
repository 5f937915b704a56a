"""Drop unreadable readings and readings outside a plausible range."""

import csv
import math
import sys

low, high = float(sys.argv[3]), float(sys.argv[4])
with open(sys.argv[1], encoding="utf-8") as src, open(sys.argv[2], "w", encoding="utf-8", newline="") as dst:
    rows = csv.DictReader(src)
    writer = csv.DictWriter(dst, fieldnames=rows.fieldnames)
    writer.writeheader()
    for row in rows:
        value = float(row["celsius"])
        if not math.isnan(value) and low <= value <= high:
            writer.writerow(row)

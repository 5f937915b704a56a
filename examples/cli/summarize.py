"""Mean temperature per station."""

import csv
import statistics
import sys
from collections import defaultdict

by_station = defaultdict(list)
with open(sys.argv[1], encoding="utf-8") as src:
    for row in csv.DictReader(src):
        by_station[row["station"]].append(float(row["celsius"]))
with open(sys.argv[2], "w", encoding="utf-8") as out:
    out.write("station,mean_celsius,readings\n")
    for station in sorted(by_station):
        values = by_station[station]
        out.write(f"{station},{statistics.mean(values):.3f},{len(values)}\n")
